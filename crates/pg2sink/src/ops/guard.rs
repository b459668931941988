//! What a request must show before the HTTP server serves it (the security
//! model of docs/api.md).
//!
//! Promises: nothing a web page from another site can make a browser send
//! changes what pg2sink captures. Every call that is not a read (anything
//! but GET and HEAD) needs a JSON `Content-Type` (a type browsers send
//! cross-site only after a CORS preflight, which pg2sink never grants), a
//! same-origin or absent `Origin` and `Sec-Fetch-Site`, and a `Host` naming
//! this server (no DNS rebinding). Reads check the `Host` too, except the
//! probes and `/metrics`, which scrapers reach under names of their own.
//! Bound to a non-loopback address without `--api.token`, the API is
//! read-only. The checks never panic, whatever the headers hold.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Json;
use serde_json::json;

use crate::error::Problem;

use super::Ops;

/// The address a connection arrived at (this end of the socket): the
/// `Host` a client names must be it, whatever address the server is bound
/// to (`0.0.0.0` is never in a `Host`).
#[derive(Clone, Copy, Debug)]
pub struct Local(pub SocketAddr);

impl axum::extract::connect_info::Connected<IncomingStream<'_, tokio::net::TcpListener>> for Local {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        // An unknown local address is unspecified: no Host names it, so
        // only localhost (on loopback) and allowed names can pass.
        Local(
            stream
                .io()
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        )
    }
}

/// A host name (or IP) given with `--api.allowed-hosts`, with the port it
/// must come with, if one was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    name: String,
    port: Option<u16>,
}

/// What the server checks, fixed at start.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The address the server is bound to.
    pub bound: SocketAddr,
    /// No `--api.token` on a non-loopback address: changing calls refused.
    pub read_only: bool,
    allowed: Vec<AllowedHost>,
}

impl Policy {
    /// The policy for a server bound to `bound`; `token` is whether
    /// `--api.token` is set; `allowed` the `--api.allowed-hosts` entries.
    pub fn new(bound: SocketAddr, token: bool, allowed: &[String]) -> Result<Policy, Problem> {
        let allowed = allowed
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| {
                parse_allowed(a).map_err(|why| {
                    Problem::new(format!("--api.allowed-hosts: {a:?} {why}"))
                        .hint("give host names or IPs, each optionally with :port, separated by commas (for example --api.allowed-hosts=pg2sink.internal,pg2sink.internal:8080)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            bound,
            read_only: !token && !canonical(bound.ip()).is_loopback(),
            allowed,
        })
    }

    /// Whether `host` (a `Host` header) names this server, reached at
    /// `local`.
    fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let local_ip = canonical(local.ip());
        let port_matches = port.is_none_or(|p| p == local.port());
        let named_ip = name
            .parse::<IpAddr>()
            .ok()
            .map(canonical)
            .is_some_and(|ip| ip == local_ip);
        // localhost and the loopback IPs resolve to this machine in every
        // browser, so no rebinding hides behind them.
        let loopback_name = local_ip.is_loopback()
            && (name == "localhost"
                || name
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| canonical(ip).is_loopback()));
        ((named_ip || loopback_name) && port_matches)
            || self
                .allowed
                .iter()
                .any(|a| a.name == name && a.port.is_none_or(|p| Some(p) == port))
    }
}

/// Unifies IPv4-mapped IPv6 addresses (a dual-stack socket) with IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `name`, `name:port`, `[v6]:port` or a bare IPv6 address, lower-cased.
fn parse_allowed(entry: &str) -> Result<AllowedHost, &'static str> {
    if let Ok(ip) = entry.parse::<std::net::Ipv6Addr>() {
        return Ok(AllowedHost {
            name: ip.to_string(),
            port: None,
        });
    }
    let (name, port) = split_host(entry).ok_or(
        "is not a plain host name or IP with an optional :port (no scheme, path or wildcard)",
    )?;
    Ok(AllowedHost { name, port })
}

/// Splits a `Host` value into the lower-cased name (IPv6 without its
/// brackets) and the port, if any; `None` when it is not of that form.
fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (ip, port)
    } else {
        match value.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    // IPs in one spelling, so `[0::1]` and `[::1]` are the same name.
    let name = match name.parse::<IpAddr>() {
        Ok(ip) => canonical(ip).to_string(),
        Err(_) => name.to_ascii_lowercase(),
    };
    valid.then_some((name, port))
}

/// Whether a `Content-Type` value is JSON (`application/json`, with any
/// parameters).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `origin` (an `Origin` header) is the page's own: http or https
/// on exactly the `host` the request was sent to.
fn same_origin(origin: &str, host: &str) -> bool {
    let origin = origin.trim();
    let authority = origin
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &origin[7..])
        .or_else(|| {
            origin
                .get(..8)
                .filter(|s| s.eq_ignore_ascii_case("https://"))
                .map(|_| &origin[8..])
        });
    authority.is_some_and(|a| !a.is_empty() && a.eq_ignore_ascii_case(host.trim()))
}

/// A refused request: the status, the body's message (what is wrong and
/// what to do) and the short reason logged.
struct Refusal {
    status: StatusCode,
    message: String,
    reason: &'static str,
}

impl Refusal {
    fn forbidden(reason: &'static str, message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message,
            reason,
        }
    }
}

/// A header's value as text ("" when absent; `None` when not text).
fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<Option<&str>> {
    match headers.get(name) {
        None => Some(None),
        Some(v) => v.to_str().ok().map(Some),
    }
}

/// A header value for the log: short and printable.
fn shown(value: Option<&str>) -> String {
    match value {
        None => "(none)".into(),
        Some(v) => v
            .chars()
            .take(100)
            .collect::<String>()
            .escape_debug()
            .to_string(),
    }
}

/// The checks, in order; `Ok` when the request may be served.
fn check(
    policy: &Policy,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    local: SocketAddr,
) -> Result<(), Refusal> {
    let read = method == Method::GET || method == Method::HEAD;
    // Scrapers and probes call these under whatever name reaches the
    // server (a service name, host.docker.internal); they change nothing
    // and show no table's data.
    if read && matches!(path, "/metrics" | "/api/health" | "/api/ready") {
        return Ok(());
    }
    let host = match text(headers, header::HOST) {
        Some(Some(h)) => h,
        Some(None) => {
            return Err(Refusal::forbidden(
                "no Host header",
                "the request has no Host header: send one naming this server (address:port or localhost:port)".into(),
            ))
        }
        None => {
            return Err(Refusal::forbidden(
                "Host header not text",
                "the Host header is not text: name this server (address:port or localhost:port)".into(),
            ))
        }
    };
    if !policy.host_allowed(host, local) {
        let name = split_host(host).map_or_else(|| host.to_string(), |(n, _)| n);
        return Err(Refusal::forbidden(
            "Host not allowed",
            format!(
                "the Host header {} does not name this server (refused to defeat DNS rebinding): use http://{}/ or, on this machine, http://localhost:{}/; to reach it under another name, start pg2sink with --api.allowed-hosts={} (PG2SINK_API_ALLOWED_HOSTS)",
                shown(Some(host)),
                display_addr(local),
                local.port(),
                shown(Some(&name)),
            ),
        ));
    }
    if read {
        return Ok(());
    }
    if method == Method::OPTIONS {
        return Err(Refusal::forbidden(
            "CORS preflight",
            "pg2sink answers no cross-origin requests: call the API from its own page or from a client that is not a browser".into(),
        ));
    }
    match text(headers, header::HeaderName::from_static("sec-fetch-site")) {
        Some(None) | Some(Some("same-origin")) | Some(Some("none")) => {}
        _ => {
            return Err(Refusal::forbidden(
                "Sec-Fetch-Site not same-origin",
                "the browser says this request comes from another site (Sec-Fetch-Site): changing calls are only taken from pg2sink's own page or from clients that are not browsers".into(),
            ))
        }
    }
    match text(headers, header::ORIGIN) {
        Some(None) => {}
        Some(Some(origin)) if same_origin(origin, host) => {}
        Some(origin) => {
            return Err(Refusal::forbidden(
                "Origin not same-origin",
                format!(
                    "the request comes from the page {} (Origin), not from pg2sink's own page at http://{}: changing calls are only taken from that page or from clients that send no Origin (curl, scripts)",
                    shown(origin),
                    host.trim()
                ),
            ))
        }
        None => {
            return Err(Refusal::forbidden(
                "Origin not text",
                "the Origin header is not text: changing calls are only taken from pg2sink's own page or from clients that send no Origin".into(),
            ))
        }
    }
    let content_type = text(headers, header::CONTENT_TYPE).flatten();
    if !content_type.is_some_and(is_json) {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "a changing call must be sent with Content-Type: application/json (got {}); for example curl -X POST -H 'Content-Type: application/json' ...",
                shown(content_type)
            ),
            reason: "Content-Type not JSON",
        });
    }
    if policy.read_only {
        return Err(Refusal::forbidden(
            "read-only: no --api.token on a non-loopback address",
            format!(
                "the API is read-only: pg2sink is bound to {}, which other machines can reach, and was started without --api.token; start it with --api.token=<secret> (or PG2SINK_API_TOKEN) and send Authorization: Bearer <secret>, or bind a loopback address (--metrics-address=127.0.0.1:{})",
                policy.bound,
                policy.bound.port()
            ),
        ));
    }
    Ok(())
}

/// `ip:port`, IPv6 in brackets, IPv4-mapped addresses as IPv4.
fn display_addr(addr: SocketAddr) -> String {
    SocketAddr::new(canonical(addr.ip()), addr.port()).to_string()
}

/// The middleware: refuses with a JSON error (and a warning in the log)
/// what [`check`] refuses, else serves the request.
pub async fn guard(
    State(ops): State<Arc<Ops>>,
    ConnectInfo(Local(local)): ConnectInfo<Local>,
    request: Request,
    next: Next,
) -> Response {
    let outcome = check(
        &ops.policy,
        request.method(),
        request.uri().path(),
        request.headers(),
        local,
    );
    match outcome {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let headers = request.headers();
            tracing::warn!(
                method = %request.method(),
                path = %request.uri().path().chars().take(200).collect::<String>(),
                reason = refusal.reason,
                host = %shown(text(headers, header::HOST).flatten()),
                origin = %shown(text(headers, header::ORIGIN).flatten()),
                sec_fetch_site = %shown(text(headers, header::HeaderName::from_static("sec-fetch-site")).flatten()),
                content_type = %shown(text(headers, header::CONTENT_TYPE).flatten()),
                "refused an http request; nothing was changed"
            );
            (refusal.status, Json(json!({ "error": refusal.message }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn policy(bound: &str, token: bool, allowed: &[&str]) -> Policy {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        Policy::new(bound.parse().unwrap(), token, &allowed).unwrap()
    }

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(
        p: &Policy,
        method: Method,
        path: &str,
        list: &[(&'static str, &str)],
        local: &str,
    ) -> u16 {
        match check(p, &method, path, &headers(list), local.parse().unwrap()) {
            Ok(()) => 200,
            Err(r) => r.status.as_u16(),
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    #[test]
    fn hosts() {
        let p = policy("127.0.0.1:9525", false, &[]);
        let local: SocketAddr = "127.0.0.1:9525".parse().unwrap();
        for ok in [
            "127.0.0.1:9525",
            "localhost:9525",
            "LOCALHOST",
            "[::1]:9525",
            "127.0.0.1",
        ] {
            assert!(p.host_allowed(ok, local), "{ok}");
        }
        for bad in [
            "evil.example:9525",
            "localhost:80",
            "localhost.:9525",
            "",
            "[::1",
            "a b",
            "x:y",
            "127.0.0.1:",
        ] {
            assert!(!p.host_allowed(bad, local), "{bad}");
        }
        let p = policy(
            "0.0.0.0:9525",
            true,
            &["pg2sink.internal", "proxy:8080", "::2"],
        );
        let outside: SocketAddr = "192.0.2.2:9525".parse().unwrap();
        assert!(p.host_allowed("192.0.2.2:9525", outside));
        assert!(!p.host_allowed("localhost:9525", outside));
        assert!(p.host_allowed("Pg2sink.Internal:1234", outside));
        assert!(p.host_allowed("proxy:8080", outside));
        assert!(!p.host_allowed("proxy:8081", outside));
        assert!(p.host_allowed("[::2]", outside));
        let mapped: SocketAddr = "[::ffff:192.0.2.2]:9525".parse().unwrap();
        assert!(p.host_allowed("192.0.2.2:9525", mapped));
        assert!(Policy::new("0.0.0.0:1".parse().unwrap(), false, &["http://x/".into()]).is_err());
        assert!(Policy::new("0.0.0.0:1".parse().unwrap(), false, &["x:99999".into()]).is_err());
    }

    #[test]
    fn changing_calls() {
        let p = policy("127.0.0.1:9525", false, &[]);
        let l = "127.0.0.1:9525";
        let host = ("host", "127.0.0.1:9525");
        let post = |list: &[(&'static str, &str)]| {
            status(&p, Method::POST, "/api/tables/public/t/stop", list, l)
        };
        assert_eq!(post(&[host, JSON]), 200);
        assert_eq!(
            post(&[
                host,
                JSON,
                ("origin", "http://127.0.0.1:9525"),
                ("sec-fetch-site", "same-origin")
            ]),
            200
        );
        assert_eq!(
            post(&[host, JSON, ("origin", "HTTPS://127.0.0.1:9525")]),
            200
        );
        assert_eq!(post(&[host, JSON, ("origin", "http://evil.example")]), 403);
        assert_eq!(post(&[host, JSON, ("origin", "null")]), 403);
        assert_eq!(
            post(&[host, JSON, ("origin", "http://127.0.0.1:9526")]),
            403
        );
        assert_eq!(post(&[host, JSON, ("origin", "ftp://127.0.0.1:9525")]), 403);
        assert_eq!(post(&[host, JSON, ("sec-fetch-site", "cross-site")]), 403);
        assert_eq!(post(&[host, JSON, ("sec-fetch-site", "same-site")]), 403);
        assert_eq!(post(&[host, ("content-type", "text/plain")]), 415);
        assert_eq!(post(&[host, ("content-type", "application/jsonx")]), 415);
        assert_eq!(post(&[host]), 415);
        assert_eq!(post(&[("host", "evil.example:9525"), JSON]), 403);
        assert_eq!(post(&[JSON]), 403);
        assert_eq!(
            status(&p, Method::OPTIONS, "/api/tables/public/t/stop", &[host], l),
            403
        );
        // Reads: Host checked, except for scrapers and probes.
        assert_eq!(status(&p, Method::GET, "/api/tables", &[host], l), 200);
        assert_eq!(
            status(
                &p,
                Method::GET,
                "/api/tables",
                &[("host", "evil.example:9525")],
                l
            ),
            403
        );
        assert_eq!(
            status(
                &p,
                Method::GET,
                "/metrics",
                &[("host", "evil.example:9525")],
                l
            ),
            200
        );
        assert_eq!(status(&p, Method::GET, "/api/health", &[], l), 200);
        // Non-loopback without a token: read-only.
        let open = policy("0.0.0.0:9525", false, &[]);
        assert!(open.read_only);
        let l = "192.0.2.2:9525";
        let host = ("host", "192.0.2.2:9525");
        assert_eq!(
            status(
                &open,
                Method::POST,
                "/api/tables/public/t/stop",
                &[host, JSON],
                l
            ),
            403
        );
        assert_eq!(status(&open, Method::GET, "/api/tables", &[host], l), 200);
        let guarded = policy("0.0.0.0:9525", true, &[]);
        assert_eq!(
            status(
                &guarded,
                Method::POST,
                "/api/tables/public/t/stop",
                &[host, JSON],
                l
            ),
            200
        );
        assert!(!policy("[::1]:9525", false, &[]).read_only);
    }

    #[test]
    fn odd_values_never_panic() {
        for v in [
            "", ":", "[", "[]", "[]:", "]:1", "::::", "a:b:c", "é", "[::1]:x", "0:0",
        ] {
            let _ = split_host(v);
            let _ = same_origin(v, v);
            let _ = is_json(v);
            let _ = parse_allowed(v);
        }
        assert!(!same_origin("http://", ""));
        assert!(!same_origin("http:/", "x"));
    }
}
