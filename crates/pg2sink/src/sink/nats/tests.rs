//! Unit tests of the NATS sink's encoding and option checks (the sink
//! against a real server: tests/nats.rs).

use super::client::{check_config, classify, Failure};
use super::config::{redact_url, NatsConfig};
use super::encoding::*;
use crate::model::{Lsn, Modification, Op, Row};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};

fn change(schema: &str, table: &str, sequence: u64) -> Modification {
    let mut after = crate::model::JsonRow::new();
    after.insert("id".into(), serde_json::json!(sequence));
    let after = Row::from(after);
    Modification {
        timestamp: crate::model::message::format_timestamp_for_tests(),
        lsn: Lsn(0x16_0000_0010),
        sequence,
        op: Op::Insert,
        namespace: schema.into(),
        name: table.into(),
        before: None,
        after: Some(after),
        unchanged: vec![],
    }
}

#[test]
fn odd_identifiers_become_one_safe_token() {
    assert_eq!(token("orders"), "orders");
    assert_eq!(token("Order_Items-2"), "Order_Items-2");
    assert_eq!(token("order.items"), "order%2Eitems");
    assert_eq!(token("my table"), "my%20table");
    assert_eq!(token("*"), "%2A");
    assert_eq!(token(">"), "%3E");
    assert_eq!(token("café"), "caf%C3%A9");
    assert_eq!(token("100%"), "100%25");
    assert_eq!(token("a\nb"), "a%0Ab");
    // Injective: the escape character is itself escaped.
    assert_ne!(token("%2E"), token("."));
    for t in [token("a.b c*>\u{1F600}"), token("$JS"), token("\t")] {
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)),
            "{t}"
        );
    }
}

#[test]
fn subjects() {
    assert_eq!(
        modification_subject("pg2sink", "public", "order.items"),
        "pg2sink.public.order%2Eitems"
    );
    assert_eq!(
        schema_subject("cdc.prod", "public", "t"),
        "cdc.prod._schemas.public.t"
    );
    // A Postgres schema named _schemas does not collide: one token fewer.
    assert_ne!(
        modification_subject("p", "_schemas", "t")
            .split('.')
            .count(),
        schema_subject("p", "x", "t").split('.').count()
    );
}

#[test]
fn message_ids_name_one_change() {
    let a = change("public", "t", 1);
    let body = serde_json::to_vec(&a).unwrap();
    let id = message_id(&a, &body);
    assert!(id.starts_with("16/10:1:public.t:"), "{id}");
    // The same change again (a replay) has the same id.
    assert_eq!(id, message_id(&a.clone(), &serde_json::to_vec(&a).unwrap()));
    // Another sequence, table or body gives another id.
    let b = change("public", "t", 2);
    assert_ne!(id, message_id(&b, &serde_json::to_vec(&b).unwrap()));
    let c = change("public", "u", 1);
    assert_ne!(id, message_id(&c, &serde_json::to_vec(&c).unwrap()));
    let mut d = a.clone();
    let mut changed = d.after.take().unwrap().into_json();
    changed.insert("id".into(), serde_json::json!(99));
    d.after = Some(changed.into());
    assert_ne!(id, message_id(&d, &serde_json::to_vec(&d).unwrap()));
    // A schema before the change has an id of its own.
    assert_ne!(id, schema_message_id(&a, &body));
    assert!(schema_message_id(&a, b"{}").contains(":schema:"));
}

#[test]
fn digest_is_stable() {
    // FNV-1a test vectors: ids must not change between versions.
    assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(digest(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn headers_carry_position_and_op() {
    let mut m = change("my schema", "t", 3);
    m.op = Op::Import;
    let h = modification_headers(&m, "the-id");
    assert_eq!(h.get(MSG_ID).unwrap().as_str(), "the-id");
    assert_eq!(h.get(LSN).unwrap().as_str(), "16/10");
    assert_eq!(h.get(SEQUENCE).unwrap().as_str(), "3");
    assert_eq!(h.get(OP).unwrap().as_str(), "import");
    assert_eq!(h.get(TABLE).unwrap().as_str(), "my%20schema.t");
    assert_eq!(h.get(KIND).unwrap().as_str(), "modification");
    let h = schema_headers(&m, "s-id");
    assert_eq!(h.get(KIND).unwrap().as_str(), "schema");
    assert!(h.get(OP).is_none());
}

#[test]
fn prefixes_and_stream_names_are_checked() {
    assert!(check_prefix("pg2sink").is_ok());
    assert!(check_prefix("cdc.prod").is_ok());
    for bad in ["", ".a", "a.", "a..b", "a.*", "a.>", "a b"] {
        assert!(check_prefix(bad).is_err(), "{bad:?}");
    }
    assert!(check_stream_name("PG2SINK").is_ok());
    for bad in ["", "A.B", "A B", "A*", "A/B"] {
        assert!(check_stream_name(bad).is_err(), "{bad:?}");
    }
    let bad = NatsConfig {
        subject_prefix: "a.*".into(),
        ..NatsConfig::default()
    };
    let e = check_config(&bad).unwrap_err().to_string();
    assert!(e.contains("--sink.nats.subject-prefix"), "{e}");
    let bad = NatsConfig {
        urls: vec!["nats://u:secret@[::1".into()],
        ..NatsConfig::default()
    };
    let e = check_config(&bad).unwrap_err().to_string();
    assert!(!e.contains("secret"), "{e}");
    assert!(check_config(&NatsConfig::default()).is_ok());
}

#[test]
fn stream_subjects_cover_the_prefix() {
    assert!(covers("pg2sink.>", "pg2sink.>"));
    assert!(covers(">", "pg2sink.>"));
    assert!(covers("*.>", "pg2sink.>"));
    assert!(covers("cdc.>", "cdc.prod.>"));
    assert!(!covers("pg2sink.*", "pg2sink.>"));
    assert!(!covers("pg2sink.public.>", "pg2sink.>"));
    assert!(!covers("other.>", "pg2sink.>"));
    assert!(!covers("pg2sink", "pg2sink.>"));
}

#[test]
fn secrets_stay_out_of_messages() {
    assert_eq!(redact_url("nats://u:pw@h:4222"), "nats://u:****@h:4222");
    assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    assert_eq!(redact_url("nats://u:pw@[::1"), "nats://****@[::1");
    let c = NatsConfig {
        urls: vec!["nats://u:pw@h:4222".into()],
        password: Some("pw".into()),
        token: Some("s3cr3t-token".into()),
        ..NatsConfig::default()
    };
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("pw") && !shown.contains("s3cr3t"),
        "{shown}"
    );
}

#[test]
fn publish_failures_are_classified() {
    let retry = |e: PublishError| matches!(classify(&e), Failure::Retry(_));
    assert!(retry(PublishError::new(PublishErrorKind::TimedOut)));
    assert!(retry(PublishError::new(PublishErrorKind::BrokenPipe)));
    assert!(retry(PublishError::new(PublishErrorKind::StreamNotFound)));
    assert!(retry(PublishError::new(
        PublishErrorKind::WrongLastMessageId
    )));
    assert!(matches!(
        classify(&PublishError::new(PublishErrorKind::MaxPayloadExceeded)),
        Failure::Stop { .. }
    ));
}
