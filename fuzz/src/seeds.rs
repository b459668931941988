//! Valid inputs to start mutating from: well-formed messages, rows and
//! values, so mutations reach deep into each parser.

/// Big-endian encoder for pgoutput messages and walsender frames.
struct Enc(Vec<u8>);

impl Enc {
    fn tag(c: u8) -> Enc {
        Enc(vec![c])
    }
    fn u8(mut self, v: u8) -> Enc {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Enc {
        self.0.extend_from_slice(v);
        self
    }
    fn cstr(self, s: &str) -> Enc {
        self.raw(s.as_bytes()).u8(0)
    }
    fn text(self, v: &[u8]) -> Enc {
        self.u8(b't').u32(v.len() as u32).raw(v)
    }
}

fn pgoutput() -> Vec<Vec<u8>> {
    let relation = Enc::tag(b'R')
        .u32(16384)
        .cstr("Odd \"Schema\"")
        .cstr("tä.ble")
        .u8(b'd')
        .u16(3)
        .u8(1)
        .cstr("id")
        .u32(23)
        .u32(u32::MAX)
        .u8(0)
        .cstr("select")
        .u32(25)
        .u32(u32::MAX)
        .u8(0)
        .cstr("b")
        .u32(17)
        .u32(u32::MAX)
        .0;
    let tuple = |e: Enc| e.u16(3).text(b"42").u8(b'n').u8(b'u');
    let insert = tuple(Enc::tag(b'I').u32(16384).u8(b'N')).0;
    let update = tuple(tuple(Enc::tag(b'U').u32(16384).u8(b'O')).u8(b'N')).0;
    let delete = tuple(Enc::tag(b'D').u32(16384).u8(b'K')).0;
    let begin = Enc::tag(b'B').u64(0x16_0000).u64(800_000_000).u32(735).0;
    let commit = Enc::tag(b'C')
        .u8(0)
        .u64(0x16_0000)
        .u64(0x16_0100)
        .u64(800_000_000)
        .0;
    let truncate = Enc::tag(b'T').u32(2).u8(3).u32(16384).u32(16385).0;
    let message = Enc::tag(b'M')
        .u8(1)
        .u64(0x16_0000)
        .cstr("pg2sink")
        .u32(5)
        .raw(b"hello")
        .0;
    let origin = Enc::tag(b'O').u64(0x16_0000).cstr("origin").0;
    let ty = Enc::tag(b'Y').u32(90001).cstr("public").cstr("hstore").0;
    let mut seeds = vec![
        relation, insert, update, delete, begin, commit, truncate, message, origin, ty,
    ];
    // The same messages inside XLogData frames, and a keepalive.
    let framed: Vec<Vec<u8>> = seeds
        .iter()
        .map(|m| {
            Enc::tag(b'w')
                .u64(0x16_0000)
                .u64(0x16_0100)
                .u64(800_000_000)
                .raw(m)
                .0
        })
        .collect();
    seeds.extend(framed);
    seeds.push(Enc::tag(b'k').u64(0x16_0100).u64(800_000_000).u8(1).0);
    seeds
}

fn copy_rows() -> Vec<Vec<u8>> {
    vec![
        b"1\thello\t\\\\x00ff\t-12.500\t{a,\"b c\",NULL}\t{\"k\": [1, 2.50]}\t2026-01-01 00:00:00+00\tt\tNaN\t2026-02-29\t1 day 02:00:00".to_vec(),
        b"\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N".to_vec(),
        b"7\ttab\\there\\nnewline\\\\back\t\\\\x\t1e5\t{}\tnull\tinfinity\tf\t-Infinity\t-infinity\t-00:00:01".to_vec(),
        "3\tunicode \u{e9}\u{1f600}\t\\\\x41\t0\t{{1,2},{3,4}}\t\"s\"\t1999-12-31 23:59:59.999999+00\tt\t1.5e-300\t0001-01-01 BC\t1 year 2 mons"
            .as_bytes()
            .to_vec(),
    ]
}

fn values() -> Vec<Vec<u8>> {
    let texts: &[&str] = &[
        "42",
        "-1.50",
        "NaN",
        "Infinity",
        "1e400",
        "{1,2,NULL}",
        "{{\"a b\",\"c\\\"d\"},{NULL,\"NULL\"}}",
        "[0:1]={1,2}",
        "{\"(1,2)\";\"(3,4)\"}",
        "(1,\"x \"\"y\"\"\",\"{1,2}\",\"\"\"k\"\"=>\"\"v\"\"\")",
        "(,,,)",
        "\"k\"=>\"v\", \"n\"=>NULL, \"q\\\"\"=>\"\\\\\"",
        "{\"(1,a,{},)\",NULL}",
        "2026-01-01 00:00:00+00",
        "\\x00ff",
        "t",
        "{\"k\": [1, 2.50e3]}",
        "1 year 2 mons 3 days 04:05:06.5",
        "(0,0),(1,1)",
        "192.168.0.1/24",
    ];
    let mut seeds = vec![];
    for (i, text) in texts.iter().enumerate() {
        // The first byte picks the type: spread the seeds over many.
        for pick in [
            i as u8,
            (i * 37) as u8,
            255 - i as u8,
            250,
            251,
            252,
            253,
            254,
        ] {
            let mut seed = vec![pick];
            seed.extend_from_slice(text.as_bytes());
            seeds.push(seed);
        }
    }
    seeds
}

fn config() -> Vec<Vec<u8>> {
    [
        "postgres://user:p%40ss@db.internal:6543/app?sslmode=require&application_name=x",
        "postgresql://[::1]:5432/db?host=/var/run/postgresql",
        "host=/tmp port=5433 user='o''brien' password='a b\\' c' dbname=app sslmode=disable",
        "url = \"postgres://r@h/app\"\nmetrics-address = \"0.0.0.0:9525\"\n[sink.file]\nschemas-path = \"/a\"\n[subscription-manager]\nschema = [\"a\", \"b\"]\nenabled = false\n",
        "import-worker-count = 3\nsink = { file = { rotate-bytes = 1e3 } }",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The seeds of the target `name`.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "pgoutput" => pgoutput(),
        "copy_rows" => copy_rows(),
        "values" => values(),
        "config" => config(),
        _ => vec![],
    }
}
