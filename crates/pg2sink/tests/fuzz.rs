//! Hostile input (issue 9): the fuzz targets of `fuzz/` on the stable
//! toolchain, inside the ordinary test binary: each target's seeds, plus
//! the files of `fuzz/corpus/<target>/` (what long `cargo fuzz` runs
//! found), mutated at random for `FUZZ_SECONDS` seconds per target
//! (default 3). No coverage guidance, so it is a smoke run, not a
//! substitute for `cargo fuzz`; it runs in every `scripts/test.sh`.
//!
//! `FUZZ_SEED=<n>` repeats a run; `FUZZ_TARGETS=a,b` picks targets. A
//! failing input is written to `fuzz/artifacts/<target>/` and replayed by
//! `cargo fuzz run <target> <file>` or by this driver (it is re-run first).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

// The checks and seeds the libFuzzer targets use, compiled in here.
#[path = "../../../fuzz/src/lib.rs"]
mod checks;

use checks::{seeds::seeds, TARGETS};

const MAX_LEN: usize = 4096;

const INTERESTING_BYTES: &[u8] = b"\0\xff\x7f\x80\\\"',;{}()[]\t\n=>:Nnt";

const TOKENS: &[&[u8]] = &[
    b"NULL",
    b"\\N",
    b"=>",
    b"\\\\",
    b"\"\"",
    b"{}",
    b"[1:2]=",
    b"e400",
    b"-Infinity",
    b"\xef\xbf\xbd",
    b"\xf0\x9f\x98\x80",
    b"%00",
    b"://",
    b"@",
    b"[[a]]\n",
];

const INTERESTING_U32: &[u32] = &[
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0xffff,
];

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(9) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 => input.insert(at, rng.next() as u8),
            3 if !input.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(64)).min(input.len());
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            5 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            7 if input.len() >= 4 => {
                let i = rng.below(input.len() - 3);
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                input[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => {
                if let Some(last) = input.pop() {
                    input.insert(at.min(input.len()), last);
                }
            }
        }
    }
    input.truncate(MAX_LEN);
}

fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect()
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `target` on `input`; on a panic, saves the input and fails.
fn check(name: &str, target: fn(&[u8]), input: &[u8]) {
    if panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_ok() {
        return;
    }
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = fuzz_dir().join("artifacts").join(name);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("crash-{hash:016x}"));
    let _ = std::fs::write(&path, input);
    panic!(
        "fuzz target {name} panicked on {} bytes {:?} (saved to {}; the panic message is above)",
        input.len(),
        String::from_utf8_lossy(input),
        path.display()
    );
}

#[test]
fn fuzz_targets_never_panic_on_mutated_inputs() {
    let seconds: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    let only: Option<Vec<String>> = std::env::var("FUZZ_TARGETS")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    eprintln!("fuzzing with FUZZ_SEED={seed}, {seconds}s per target");
    for &(name, target) in TARGETS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == name)) {
            continue;
        }
        // Earlier failures first, then the seeds and the corpus as they are.
        for input in files_in(&fuzz_dir().join("artifacts").join(name)) {
            check(name, target, &input);
        }
        let mut pool = seeds(name);
        pool.extend(files_in(&fuzz_dir().join("corpus").join(name)));
        assert!(!pool.is_empty(), "no seeds for {name}");
        for input in &pool {
            check(name, target, input);
        }
        let mut rng = Rng(seed);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut runs = 0u64;
        let mut input = vec![];
        while Instant::now() < deadline {
            for _ in 0..64 {
                // Mostly fresh from a seed, sometimes mutating further.
                if rng.below(4) != 0 || input.is_empty() {
                    input = pool[rng.below(pool.len())].clone();
                }
                mutate(&mut rng, &mut input, &pool);
                check(name, target, &input);
                runs += 1;
            }
        }
        eprintln!("{name}: {runs} inputs, no panic");
    }
}
