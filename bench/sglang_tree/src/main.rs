//! Times SGLang's TokenTree on bench/tree_ops.py's workload; prints one JSON line.
//!
//!     sglbench WORKLOAD      (the file bench/tree_ops.py --external writes)
//!
//! One untimed run first, then one timed run, each from an empty tree:
//! insert every sequence (one tenant, as the Python tree's one namespace), match
//! every query (match_prefix_with_counts), then evict_tenant down to half the
//! tenant's tokens. The tree has no pin/lock, so match_pin_unpin is not reported.

mod radix_tree;

use std::{fs, hint::black_box, sync::Arc, time::Instant};

/// Seconds on the clock bench/tree_ops.py asks for (TREE_OPS_CLOCK): wall, or CPU time of the process.
struct Clock {
    cpu: bool,
    start: Instant,
}

impl Clock {
    fn now(&self) -> f64 {
        if self.cpu {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
        } else {
            self.start.elapsed().as_secs_f64()
        }
    }
}

use radix_tree::{TenantId, TokenTree};

fn read_groups(path: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let bytes = fs::read(path).expect("read workload");
    let ints: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut at = 0;
    let mut group = || {
        let n = ints[at] as usize;
        at += 1;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = ints[at] as usize;
            at += 1;
            out.push(ints[at..at + len].iter().map(|&t| t as u32).collect::<Vec<u32>>());
            at += len;
        }
        out
    };
    let sequences = group();
    let queries = group();
    (sequences, queries)
}

fn one_run(clock: &Clock, sequences: &[Vec<u32>], queries: &[Vec<u32>]) -> (f64, f64, f64, usize, usize) {
    let tree = TokenTree::new();
    let tenant: TenantId = Arc::from("w0");

    let t0 = clock.now();
    for seq in sequences {
        tree.insert_tokens(black_box(seq), "w0");
    }
    let t_insert = clock.now() - t0;

    let mut matched = 0usize;
    let t0 = clock.now();
    for q in queries {
        matched += black_box(tree.match_prefix_with_counts(black_box(q))).matched_token_count;
    }
    let t_match = clock.now() - t0;

    let size = tree.tenant_token_size(&tenant);
    let t0 = clock.now();
    tree.evict_tenant(&tenant, size / 2);
    let t_evict = clock.now() - t0;
    let freed = size - tree.tenant_token_size(&tenant);
    (t_insert, t_match, t_evict, matched, freed)
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: sglbench WORKLOAD");
    let (sequences, queries) = read_groups(&path);
    let cpu = std::env::var("TREE_OPS_CLOCK").map(|c| c == "cpu").unwrap_or(false);
    let clock = Clock { cpu, start: Instant::now() };
    one_run(&clock, &sequences, &queries); // warm-up
    let (t_insert, t_match, t_evict, matched, freed) = one_run(&clock, &sequences, &queries);
    println!(
        "{{\"insert_us_per_seq\": {}, \"match_us_per_query\": {}, \"evict_half_ms\": {}, \"matched_tokens\": {}, \"evicted_tokens\": {}}}",
        t_insert / sequences.len() as f64 * 1e6,
        t_match / queries.len() as f64 * 1e6,
        t_evict * 1e3,
        matched,
        freed
    );
}
