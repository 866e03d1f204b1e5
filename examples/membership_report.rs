//! Prints fleetkv's membership figures next to its peers, measured in one run
//! on one machine: count and list for five queries against a reference scan,
//! SQLite with expression indexes, and raw roaring bitmaps (the floor); then
//! bulk import against raw sled batches (time and CPU time), rebuild on
//! open, index memory, the index checkpoint and write costs.
//!
//! `cargo run --release --example membership_report -- --machines 100000`
//! (`--help` for the options; `--features write-timing` adds the per-stage
//! breakdown of a param write; `--svg PATH` also draws the count and group-by
//! medians as a chart).

#[path = "../benches/support/fleet.rs"]
mod fleet;
#[path = "../benches/support/watchdog.rs"]
mod watchdog;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleetkv::{Kind, ListOptions, Machine, Options, Store};
use serde_json::json;

/// Counts live heap bytes so that index memory is measured, not estimated.
/// Each thread adds to a slot of its own (threads past [`SLOTS`] share):
/// one shared counter moved its cache line between the cores on most
/// allocations of an import, whose writer and storage thread allocate at
/// once, and slowed the import it measured. [`live`] sums the slots.
struct Counting;

const SLOTS: usize = 64;

#[repr(align(128))]
struct Slot(AtomicIsize);

static COUNTS: [Slot; SLOTS] = [const { Slot(AtomicIsize::new(0)) }; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never
    // allocates, and it stays readable while a thread exits.
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count(bytes: isize) {
    let slot = MY_SLOT
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS);
            }
            s.get()
        })
        .unwrap_or(0);
    COUNTS[slot].0.fetch_add(bytes, Ordering::Relaxed);
}

/// Live heap bytes: the sum of every thread's slot (a thread may free
/// what another allocated, so one slot alone can be negative).
fn live() -> isize {
    COUNTS.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            count(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        count(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            count(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One write's time over `n` writes, each timed on its own: a write's
/// median, its mean (with the tail: a sample of [`median`] is a batch's
/// mean) and its 90th percentile.
fn each(n: usize, mut f: impl FnMut()) -> (Duration, Duration, Duration) {
    let times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median_mean_p90(times)
}

/// The median, mean and 90th percentile of `times` (not empty).
fn median_mean_p90(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    let n = times.len();
    let mean = times.iter().sum::<Duration>() / n as u32;
    times.sort();
    (times[n / 2], mean, times[n * 9 / 10])
}

/// [`each`] for two calls taken in turns, `n` of each (given their turn).
fn each_alternated(
    n: usize,
    mut f: impl FnMut(usize),
    mut g: impl FnMut(usize),
) -> (
    (Duration, Duration, Duration),
    (Duration, Duration, Duration),
) {
    let (mut fs, mut gs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for k in 0..n {
        let t = Instant::now();
        f(k);
        fs.push(t.elapsed());
        let t = Instant::now();
        g(k);
        gs.push(t.elapsed());
    }
    (median_mean_p90(fs), median_mean_p90(gs))
}

/// Median time of one call: `samples` samples, each timing a batch sized so
/// that a sample takes about 2 ms (at least one call).
fn median(samples: usize, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    f();
    let one = t.elapsed().max(Duration::from_nanos(20));
    let batch = (Duration::from_millis(2).as_nanos() / one.as_nanos()).clamp(1, 100_000) as u32;
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed() / batch
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A v4 UUID as random as `new_v4`'s but the same for `i` in every run
/// (splitmix64), so that fleetkv and raw sled store the same bytes.
fn random_uuid(i: usize) -> uuid::Uuid {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let seed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let bytes = (u128::from(mix(seed)) << 64 | u128::from(mix(seed ^ 0xdead_beef))).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64())
}

const HELP: &str =
    "membership_report [--machines N] [--random-uuids] [--writes-only] [--cli PATH] [--keep DIR] [--import-rounds K] [--svg PATH]

  --machines N     fleet size (default 100000)
  --random-uuids   give each machine a random (v4) UUID, as real fleets
                   have, instead of the fleet's sequential ones (which share
                   most of their bytes, and so pack smaller in the index)
  --writes-only    skip the query table, SQLite, index memory and reopen:
                   only bulk import vs raw sled and the write figures
  --cli PATH       the fleetkv binary: adds one process per count (answered
                   from the clean close's snapshot, and once with the store
                   opened) beside one sqlite3 process, and an open after
                   SIGKILL mid-import
  --keep DIR       build the store in DIR (which must not exist) and keep it
  --import-rounds K  alternated rounds of bulk import and raw sled batches
                   (default 3); the medians are compared
  --svg PATH       also write the count and group-by medians (fleetkv, SQLite,
                   floor) as an SVG bar chart on a log time axis to PATH
                   (not with --writes-only, which measures no queries)

Built with `--features write-timing`, it also prints where the time of one
param write goes, stage by stage (medians over the timed writes).";

/// Median per stage over `writes`, in the order stages first appear.
fn stage_medians(writes: &[fleetkv::timing::Stages]) -> Vec<(&'static str, Duration)> {
    let mut names: Vec<&'static str> = Vec::new();
    for w in writes {
        for (s, _) in w {
            if !names.contains(s) {
                names.push(s);
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mut v: Vec<Duration> = writes
                .iter()
                .map(|w| {
                    w.iter()
                        .find(|(s, _)| *s == name)
                        .map_or(Duration::ZERO, |(_, d)| *d)
                })
                .collect();
            v.sort();
            (name, v[v.len() / 2])
        })
        .collect()
}

/// The child the report SIGKILLs mid-import: imports the JSON array in
/// `file` into the store in `dir` and prints a line once each write has
/// committed, so that the parent kills it between two writes' commits.
fn import_child(dir: &str, file: &str) {
    use std::io::Write;
    let store = Store::open(dir).unwrap();
    let doc = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    fleetkv::transfer::import_with(&store, doc, None, |_, done, _| {
        if done > 0 {
            println!("{done}");
            let _ = std::io::stdout().flush();
        }
    })
    .unwrap();
}

/// One alternated round of the import comparison: wall and CPU seconds
/// (all threads) of the import, then of raw sled's batches.
struct Round {
    import: (Duration, f64),
    raw: (Duration, f64),
}

impl Round {
    /// The median of `f` over `rounds` (not empty).
    fn median<T: PartialOrd>(rounds: &[Round], f: impl Fn(&Round) -> T) -> T {
        let mut v: Vec<T> = rounds.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.swap_remove(v.len() / 2)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--import-child") {
        return import_child(&args[i + 1], &args[i + 2]);
    }
    let writes_only = args.iter().any(|a| a == "--writes-only");
    let n: usize = args
        .iter()
        .position(|a| a == "--machines")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let scan_samples = if n >= 500_000 { 1 } else { 3 };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "fleet: {n} machines, {} cluster profiles; {cores} cores",
        fleet::CLUSTERS
    );
    let svg = arg(&args, "--svg");
    if writes_only && svg.is_some() {
        eprintln!("--svg: ignored with --writes-only (no queries are measured)");
    }

    // Bulk import vs raw sled batches of the same encoded bytes, in
    // alternated rounds (`--import-rounds K`): one pair is not a figure.
    // Rounds of one process swung from 31% to 108% at 100k (stop 53), raw
    // sled alone taking 0.33–0.83 s and the import 0.63–1.44 s; until stop
    // 52 the report timed one pair, the import first in a fresh process.
    // Each round imports into a fresh store, then, with that store still
    // open, writes raw sled into a fresh directory; the round's store is
    // closed before the next round. The last round's store is the one the
    // rest of the report measures.
    // `--keep DIR`: build that store there and leave it (DIR must not exist).
    let kept = arg(&args, "--keep").map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = kept.as_deref().unwrap_or(tmp.path());
    let rounds = match arg(&args, "--import-rounds").map(|r| r.parse::<usize>()) {
        None => 3,
        Some(Ok(k)) if k > 0 => k,
        Some(_) => {
            eprintln!("--import-rounds: a number of rounds, 1 or more\n\n{HELP}");
            std::process::exit(2);
        }
    };
    let random_uuids = args.iter().any(|a| a == "--random-uuids");
    let machine = |i: usize| {
        let mut m = fleet::machine(i);
        if random_uuids {
            m.uuid = random_uuid(i);
        }
        m
    };
    let docs: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&machine(i)).unwrap())
        .collect();
    let mut taken: Vec<Round> = Vec::with_capacity(rounds);
    let mut raw_insert = Duration::ZERO;
    let mut last: Option<(Store, Option<tempfile::TempDir>)> = None;
    for r in 0..rounds {
        // The previous round's store closes first (its checkpoint and
        // flush are not this round's work).
        drop(last.take());
        let own_dir = (r + 1 < rounds).then(|| tempfile::tempdir().unwrap());
        let store = fleet::fleetkv(0, Some(own_dir.as_ref().map_or(dir, |d| d.path())));
        // The batches are built before the clock starts, as raw sled's
        // encoded documents are: building the caller's machines is not the
        // import's work (cloning them inside the timed loop took 0.16–0.51 s
        // of a 100k import's 1.7–2.5 s in a scratch program).
        let mut batches: Vec<Vec<Machine>> = Vec::with_capacity(n.div_ceil(10_000));
        for i in 0..n {
            if i % 10_000 == 0 {
                batches.push(Vec::with_capacity(10_000));
            }
            if let Some(batch) = batches.last_mut() {
                batch.push(machine(i));
            }
        }
        let (t, cpu) = (Instant::now(), cpu_seconds());
        for batch in batches {
            store.machines().import(batch).unwrap();
        }
        store.flush().unwrap();
        let import = (t.elapsed(), cpu_seconds() - cpu);
        // The checkpoint the import's last writes started in the background
        // must not share the cores with raw sled's timed run: waited out
        // (`checkpoint` waits for it, then writes one more), untimed.
        store.checkpoint().unwrap();
        let raw_dir = tempfile::tempdir().unwrap();
        let raw = sled::open(raw_dir.path()).unwrap();
        let (t, cpu) = (Instant::now(), cpu_seconds());
        for (c, chunk) in docs.chunks(10_000).enumerate() {
            let mut b = sled::Batch::default();
            for (j, d) in chunk.iter().enumerate() {
                b.insert(&((c * 10_000 + j) as u32).to_be_bytes(), d.as_slice());
            }
            raw.apply_batch(b).unwrap();
        }
        raw.flush().unwrap();
        let raw_taken = (t.elapsed(), cpu_seconds() - cpu);
        if r + 1 == rounds {
            // sled's own insert of the bytes one param write stores for its
            // machine.
            let doc42 = docs[42].clone();
            raw_insert = median(201, || {
                raw.insert(42u32.to_be_bytes(), doc42.as_slice()).unwrap();
            });
        }
        drop(raw);
        taken.push(Round {
            import,
            raw: raw_taken,
        });
        last = Some((store, own_dir));
    }
    drop(docs);
    let (store, _own_dir) = last.expect("--import-rounds is at least 1");
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    let import = Round::median(&taken, |r| r.import.0);
    let raw_time = Round::median(&taken, |r| r.raw.0);
    let per_round =
        |f: &dyn Fn(&Round) -> String| taken.iter().map(f).collect::<Vec<_>>().join(", ");
    println!(
        "| bulk import (fleetkv, batches of 10k), median of {rounds} rounds | {} ({:.0} machines/s; rounds: {}) |",
        fmt(import),
        n as f64 / import.as_secs_f64(),
        per_round(&|r| fmt(r.import.0))
    );
    println!(
        "| raw sled batched insert, same bytes, median of the same rounds | {} ({:.0} machines/s; rounds: {}) |",
        fmt(raw_time),
        n as f64 / raw_time.as_secs_f64(),
        per_round(&|r| fmt(r.raw.0))
    );
    println!(
        "| import / raw sled rate, of the medians | {:.0}% (each round: {}) |",
        100.0 * raw_time.as_secs_f64() / import.as_secs_f64(),
        per_round(&|r| format!(
            "{:.0}%",
            100.0 * r.raw.0.as_secs_f64() / r.import.0.as_secs_f64()
        ))
    );
    // Both use more than one core (sled's IO threads; the import's index
    // build beside its commits): on a 2-core machine the CPU time bounds
    // the rate more than the overlap does.
    let import_cpu = Round::median(&taken, |r| r.import.1);
    let raw_cpu = Round::median(&taken, |r| r.raw.1);
    println!(
        "| CPU time, all threads, medians: import / raw sled | {import_cpu:.2} s / {raw_cpu:.2} s ({:.2}×; {:.1} / {:.1} cores busy) |",
        import_cpu / raw_cpu,
        import_cpu / import.as_secs_f64(),
        raw_cpu / raw_time.as_secs_f64()
    );
    println!(
        "| raw sled insert of one machine's bytes (median) | {} |",
        fmt(raw_insert)
    );
    if writes_only {
        write_figures(&store, n);
        return;
    }
    let sqlite_t = Instant::now();
    let sql = fleet::Sqlite::load(n);
    let sqlite_load = sqlite_t.elapsed();
    let floor = fleet::Floor::build(n);

    println!();
    println!("| query | answer | fleetkv count | scan | SQLite | floor | vs scan | vs SQLite | vs floor | fleetkv list 100 | SQLite list 100 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut chart = Vec::new();
    for (i, (name, text)) in fleet::QUERIES.iter().enumerate() {
        let f = fleet::filter(text);
        let q = store.machines().prepare(&f).unwrap();
        let answer = store.machines().count_query(&q);
        let scan_len = store.machines().scan(&f).unwrap().len() as u64;
        assert_eq!(answer, scan_len, "{name}: index and scan disagree");
        assert_eq!(answer, sql.count(i), "{name}: SQLite disagrees");
        assert_eq!(answer, floor.count(i), "{name}: floor disagrees");
        let ours = median(101, || {
            black_box(store.machines().count_query(&q));
        });
        let scan = median(scan_samples, || {
            black_box(store.machines().scan(&f).unwrap());
        });
        let sqlite = median(11, || {
            black_box(sql.count(i));
        });
        let fl = median(101, || {
            black_box(floor.count(i));
        });
        let opts = ListOptions {
            limit: Some(100),
            slim: vec!["Params".into(), "Meta".into()],
            ..Default::default()
        };
        let list = median(31, || {
            black_box(store.machines().list_query(&q, &opts).unwrap());
        });
        let sql_list = median(11, || {
            black_box(sql.list(i));
        });
        println!(
            "| {name} `{text}` | {answer} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(ours),
            fmt(scan),
            fmt(sqlite),
            fmt(fl),
            ratio(scan, ours),
            ratio(sqlite, ours),
            ratio(ours, fl),
            fmt(list),
            fmt(sql_list)
        );
        chart.push(ChartRow {
            label: format!("{name} {text}"),
            fleetkv: ours,
            sqlite,
            floor: Some(fl),
        });
    }

    chart.extend(group_figures(&store, &sql));
    if let Some(path) = &svg {
        let title = format!(
            "fleetkv count vs SQLite vs the roaring floor: {} machines, {cores} cores (median, log scale)",
            thousands(n)
        );
        std::fs::write(path, svg_chart(&title, &chart))
            .unwrap_or_else(|e| panic!("--svg: cannot write {path}: {e}"));
        eprintln!("chart written to {path}");
    }

    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| SQLite load + index build | {} |", fmt(sqlite_load));

    // Index memory: live heap held by a second rebuild (the first warms
    // sled's page cache so that the delta is the index alone).
    drop(store.rebuild_probe().unwrap());
    let before = live();
    let probe = store.rebuild_probe().unwrap();
    let bytes = live() - before;
    drop(probe);
    println!(
        "| index memory | {:.1} MiB ({:.0} bytes/machine) |",
        bytes as f64 / 1048576.0,
        bytes as f64 / n as f64
    );

    write_figures(&store, n);

    // Opening: from the checkpoint a clean close writes, and by rebuilding.
    let q2 = fleet::filter(fleet::QUERIES[1].1);
    let t = Instant::now();
    drop(store);
    let close = t.elapsed();
    let open_count = |label: &str| {
        let (rss, heap) = (rss_bytes(), live());
        let t = Instant::now();
        let s = Store::open(dir).unwrap();
        black_box(s.machines().count(&q2).unwrap());
        let took = t.elapsed();
        let per = |b: i64| b as f64 / n as f64;
        println!(
            "| open + first Q2 count, in process, {label} ({:?}) | {} (heap +{:.0} B/machine, RSS +{:.0} B/machine) |",
            s.recovery(),
            fmt(took),
            per((live() - heap) as i64),
            per(rss_bytes() - rss)
        );
        s
    };
    println!(
        "| clean close (flush + index checkpoint) | {} |",
        fmt(close)
    );
    let checkpoint_bytes = std::fs::metadata(dir.join("fleetkv.index")).map_or(0, |m| m.len());
    println!(
        "| index checkpoint file | {:.1} MiB ({:.0} bytes/machine) |",
        checkpoint_bytes as f64 / 1048576.0,
        checkpoint_bytes as f64 / n as f64
    );
    // sled's first open after the store's close may replay its log and
    // write a snapshot when it closes: done once, untimed, so that the
    // floor and the store's open below both find sled as a clean close left
    // it.
    drop(sled::open(dir).unwrap());
    let t = Instant::now();
    let db = sled::open(dir).unwrap();
    black_box(db.get(b"s:rev").unwrap());
    let floor = t.elapsed();
    drop(db);
    println!(
        "| sled's own open of the same directory + one get (the floor) | {} |",
        fmt(floor)
    );
    let reopened = open_count("after a clean close");
    // The report's first write figure again, on the reopened store: no
    // import's pages still going to disk, as a long-running server or
    // agent meets it. `Store::open`'s default is durable (each write waits
    // for its flush); the buffered figure is the one to set beside the
    // first.
    let reopened_writes = |s: &Store, label: &str, n: usize| {
        let machines = s.objects(Kind::Machine).unwrap();
        let mut k = 0u64;
        let (write, write_mean, write_p90) = each(n, || {
            k += 1;
            machines
                .set_param_value("node-0000042", "rack", None, json!(k % 50))
                .unwrap();
        });
        println!(
            "| one param write on the reopened store, {label}: median / mean / p90 of {} | {} / {} / {} |",
            thousands(n),
            fmt(write),
            fmt(write_mean),
            fmt(write_p90)
        );
    };
    reopened_writes(&reopened, "durable (the default)", 1_001);
    drop(reopened);
    let buffered = Store::open_with(
        dir,
        Options {
            durable: false,
            ..Options::default()
        },
    )
    .unwrap();
    reopened_writes(&buffered, "buffered", WRITES);
    drop(buffered);
    std::fs::remove_file(dir.join("fleetkv.index")).unwrap();
    drop(open_count("no checkpoint: rebuild"));

    // One process per call, as scripts use the CLI, beside one sqlite3
    // process on a file with the same indexes.
    if let Some(cli) = arg(&args, "--cli") {
        let db_file = dir.join("peer.sqlite");
        sql.conn
            .execute(&format!("VACUUM INTO '{}'", db_file.display()), [])
            .unwrap();
        // `before` runs ahead of each process, untimed.
        let procs = |mut c: std::process::Command, before: &dyn Fn()| {
            let mut times: Vec<Duration> = (0..7)
                .map(|_| {
                    before();
                    let t = Instant::now();
                    let o = c.output().unwrap();
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    t.elapsed()
                })
                .collect();
            times.sort();
            times[times.len() / 2]
        };
        println!();
        println!("| one process per count (median of 7) | fleetkv | sqlite3 | ratio |");
        println!("|---|---:|---:|---:|");
        // The floor: a process that only opens sled (`examples/sled_open`,
        // built beside this report) and reads one key.
        let floor = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.join("sled_open")))
            .filter(|p| p.exists());
        match &floor {
            Some(f) => {
                let mut c = std::process::Command::new(f);
                c.arg(dir);
                println!(
                    "| the floor: sled's own open + one get + close (`sled_open`) | {} | | |",
                    fmt(procs(c, &|| ()))
                );
            }
            None => eprintln!(
                "(no floor row: build it with `cargo build --release --example sled_open`)"
            ),
        }
        let count = |text: &str| {
            let mut c = std::process::Command::new(&cli);
            c.arg("--data").arg(dir).args(["machines", "count", text]);
            c
        };
        // sled's opens above may have moved its files past the snapshot the
        // last close left: one count that opens the store leaves it again.
        let settle = count(fleet::QUERIES[0].1).output().unwrap();
        assert!(settle.status.success());
        let snapshot = dir.join("fleetkv.clean");
        for i in [0, 1, 3] {
            let (name, text) = fleet::QUERIES[i];
            let mut peer = std::process::Command::new("sqlite3");
            peer.arg(&db_file).arg(fleet::SQL_COUNT[i]);
            let (a, b) = (procs(count(text), &|| ()), procs(peer, &|| ()));
            assert!(snapshot.exists(), "a count process opened the store");
            println!(
                "| {name} `{text}` (from the clean close's snapshot) | {} | {} | {} |",
                fmt(a),
                fmt(b),
                ratio(a, b)
            );
        }
        // The same process when it must open the store: the snapshot
        // removed before each (as a write since the close would have).
        let (name, text) = fleet::QUERIES[0];
        let forget = || {
            let _ = std::fs::remove_file(&snapshot);
        };
        let opened = procs(count(text), &forget);
        println!(
            "| {name} `{text}`, the store opened (no snapshot) | {} | | |",
            fmt(opened)
        );

        // SIGKILL in the middle of an import of 30,000 new machines (three
        // writes), once the first has committed: this report run again as
        // the importing child says when.
        use std::io::BufRead;
        let extra: Vec<_> = (n..n + 30_000).map(machine).collect();
        let file = dir.join("extra.json");
        std::fs::write(&file, serde_json::to_vec(&extra).unwrap()).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--import-child")
            .arg(dir)
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut committed = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut committed)
            .unwrap();
        let _ = child.kill();
        let label = match child.wait().unwrap().code() {
            None => format!(
                "after SIGKILL mid-import ({} of 30,000 committed)",
                committed.trim()
            ),
            Some(_) => "after an import that finished before its SIGKILL".into(),
        };
        println!();
        println!("| figure | value |");
        println!("|---|---:|");
        let s = open_count(&label);
        s.verify_indexes().unwrap();
    }
}

/// Counts per value (`machines count … --group-by KEY`) beside SQLite's
/// `GROUP BY` on the same data; the answers must agree.
fn group_figures(store: &Store, sql: &fleet::Sqlite) -> Vec<ChartRow> {
    println!();
    println!("| group-by (median) | filter | key | groups | fleetkv | SQLite | vs SQLite |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let mut chart = Vec::new();
    for (i, (name, text, key, _)) in fleet::GROUPS.iter().enumerate() {
        let f = if text.is_empty() {
            fleetkv::Filter::all()
        } else {
            fleet::filter(text)
        };
        let by = [key.to_string()];
        let groups = store.machines().group_count(&f, &by).unwrap();
        let counts: Vec<u64> = groups.iter().map(|g| g.count).collect();
        assert_eq!(counts, sql.group(i), "{name}: SQLite disagrees");
        let ours = median(31, || {
            black_box(store.machines().group_count(&f, &by).unwrap());
        });
        let sqlite = median(5, || {
            black_box(sql.group(i));
        });
        println!(
            "| {name} | `{text}` | `{key}` | {} | {} | {} | {} |",
            groups.len(),
            fmt(ours),
            fmt(sqlite),
            ratio(sqlite, ours)
        );
        let over = if text.is_empty() {
            "all machines"
        } else {
            text
        };
        chart.push(ChartRow {
            label: format!("{name}: group-by {key} over {over}"),
            fleetkv: ours,
            sqlite,
            floor: None,
        });
    }
    chart
}

/// Resident set size from /proc (0 where there is none).
/// CPU time of this process (every thread, user and system) so far, in
/// seconds (`/proc/self/stat` counts USER_HZ ticks: 100 a second on Linux).
fn cpu_seconds() -> f64 {
    watchdog::cpu_ticks(std::process::id()) as f64 / 100.0
}

fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Param writes timed in each of the two write figures.
const WRITES: usize = 10_001;

/// Writes with index maintenance, and where one param write's time goes.
fn write_figures(store: &Store, n: usize) {
    // Waits out a background checkpoint the import started (and writes one
    // more), so that the writes below do not share the two cores with it.
    store.checkpoint().unwrap();
    // Then a checkpoint alone: each encodes the whole index and writes it.
    let (mut took, cpu) = (Vec::new(), cpu_seconds());
    for _ in 0..3 {
        let t = Instant::now();
        store.checkpoint().unwrap();
        took.push(t.elapsed());
    }
    let cpu_each = (cpu_seconds() - cpu) / 3.0;
    took.sort();
    println!(
        "| index checkpoint (`Store::checkpoint`): median of 3 / CPU time each | {} / {:.0} ms |",
        fmt(took[1]),
        cpu_each * 1e3
    );
    let mut i = 0u64;
    fleetkv::timing::take();
    // Each write timed on its own (at about 20 µs the clock costs nothing
    // worth batching away): the median is one write's, and the mean beside
    // it carries the tail (about a tenth of the writes take 40–60 µs, when
    // the storage thread or sled's IO threads hold the other core).
    // As the server and the clients write a param (the answer is the value
    // written, DRP's param API: the machine is not read back), alternated
    // write by write with `Machines::set_param`, which returns the machine
    // decoded, so that both see the same state of the machine.
    let machines = store.objects(Kind::Machine).unwrap();
    let ((write, write_mean, write_p90), (typed, typed_mean, typed_p90)) = each_alternated(
        WRITES,
        |k| {
            machines
                .set_param_value("node-0000042", "rack", None, json!((2 * k) % 50))
                .unwrap();
        },
        |k| {
            store
                .machines()
                .set_param("node-0000042", "rack", json!((2 * k + 1) % 50))
                .unwrap();
        },
    );
    println!(
        "| one param write incl. index maintenance: median / mean / p90 of {} | {} / {} / {} |",
        thousands(WRITES),
        fmt(write),
        fmt(write_mean),
        fmt(write_p90)
    );
    println!(
        "| the same through `Machines::set_param`, which decodes the machine it returns (alternated with the above) | {} / {} / {} |",
        fmt(typed),
        fmt(typed_mean),
        fmt(typed_p90)
    );
    // The stages of the writes above that answered the value.
    let stages: Vec<_> = fleetkv::timing::take().into_iter().step_by(2).collect();
    // The same write, each to another machine: its record is read from the
    // engine, not from the last write's batch the engine still holds.
    let (spread, spread_mean, spread_p90) = each(WRITES, || {
        i += 1;
        machines
            .set_param_value(
                &format!("node-{:07}", (i as usize * 7919) % n),
                "rack",
                None,
                json!(i % 50),
            )
            .unwrap();
    });
    println!(
        "| the same, each to another machine: median / mean / p90 | {} / {} / {} |",
        fmt(spread),
        fmt(spread_mean),
        fmt(spread_p90)
    );
    fleetkv::timing::take();
    let t = Instant::now();
    store
        .profiles()
        .set_param("global", "site/ntp", json!("10.0.0.1"))
        .unwrap();
    let global_add = t.elapsed();
    let t = Instant::now();
    store
        .profiles()
        .set_param("global", "site/ntp", json!("10.0.0.2"))
        .unwrap();
    let global_change = t.elapsed();
    println!(
        "| `global` param added / changed on {n} machines | {} / {} |",
        fmt(global_add),
        fmt(global_change)
    );
    let t = Instant::now();
    store
        .profiles()
        .set_param("cluster-7", "cluster/data", json!("x"))
        .unwrap();
    println!(
        "| cluster profile param change ({} members) | {} |",
        n / fleet::CLUSTERS,
        fmt(t.elapsed())
    );
    // A delete touches every key the machine had a value in: while a
    // background checkpoint holds its copy of the index (at 1M the `global`
    // change above starts one that encodes for about 0.5 s), each of those
    // keys is copied before it changes.
    let t = Instant::now();
    store
        .machines()
        .delete(&format!("node-{:07}", n - 1))
        .unwrap();
    let during = t.elapsed();
    store.checkpoint().unwrap();
    let t = Instant::now();
    store
        .machines()
        .delete(&format!("node-{:07}", n - 2))
        .unwrap();
    println!(
        "| machine delete right after those / with no checkpoint running | {} / {} |",
        fmt(during),
        fmt(t.elapsed())
    );
    store.verify_indexes().unwrap();
    if !stages.is_empty() {
        let medians = stage_medians(&stages);
        let mut totals: Vec<Duration> = stages
            .iter()
            .map(|w| w.iter().map(|(_, d)| *d).sum())
            .collect();
        totals.sort();
        println!();
        println!("| param write stage ({} writes) | median |", stages.len());
        println!("|---|---:|");
        for (name, d) in &medians {
            println!("| {name} | {} |", fmt(*d));
        }
        println!(
            "| sum of stage medians / median of totals | {} / {} |",
            fmt(medians.iter().map(|(_, d)| *d).sum()),
            fmt(totals[totals.len() / 2])
        );
    }
}

/// One chart group: the medians printed in a table row.
struct ChartRow {
    label: String,
    fleetkv: Duration,
    sqlite: Duration,
    /// Only count queries have a roaring floor.
    floor: Option<Duration>,
}

/// `100000` → `100,000`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Text for XML content and attributes (query texts hold `^`, `$`, `[` and
/// may hold `<` or `&`).
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal grouped bar chart of `rows` on a log time axis spanning the
/// decades around the measured values, as SVG text. Hand-written: a plotting
/// crate (plotters & co.) would pull a large dependency tree into the build
/// for about a hundred lines of markup.
fn svg_chart(title: &str, rows: &[ChartRow]) -> String {
    use std::fmt::Write;
    const SERIES: [(&str, &str); 3] = [
        ("fleetkv", "#1f77b4"),
        ("SQLite", "#ff7f0e"),
        ("roaring floor", "#8c8c8c"),
    ];
    let (width, left, right) = (960.0, 20.0, 870.0);
    let (bar_h, bar_step, label_h, group_gap) = (12.0, 15.0, 18.0, 14.0);
    let (axis_top, plot_top) = (78.0, 86.0);

    // Decades: 10^lo ns ..= 10^hi ns, with every value inside.
    let log = |d: Duration| (d.as_nanos().max(1) as f64).log10();
    let all = rows
        .iter()
        .flat_map(|r| [Some(r.fleetkv), Some(r.sqlite), r.floor])
        .flatten();
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), d| {
        (lo.min(log(d)), hi.max(log(d)))
    });
    let (lo, hi) = if lo > hi {
        (0, 1)
    } else {
        (
            lo.floor() as i32,
            (hi.ceil() as i32).max(lo.floor() as i32 + 1),
        )
    };
    let x = |l: f64| left + (l - lo as f64) / (hi - lo) as f64 * (right - left);

    let group_h = |r: &ChartRow| label_h + bar_step * if r.floor.is_some() { 3.0 } else { 2.0 };
    let plot_bottom = plot_top + rows.iter().map(|r| group_h(r) + group_gap).sum::<f64>();
    let height = plot_bottom + 24.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    // Legend.
    let mut lx = left;
    for (name, color) in SERIES {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="38" width="12" height="12" fill="{color}"/><text x="{}" y="48">{name}</text>"#,
            lx + 16.0
        );
        lx += 30.0 + 7.5 * name.len() as f64;
    }
    // Gridlines: labelled decades, faint 2..9 between them.
    for e in lo..=hi {
        let gx = x(e as f64);
        let label = decade_label(e);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{axis_top}" x2="{gx:.1}" y2="{plot_bottom}" stroke="#bbb"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{label}</text><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            axis_top - 4.0,
            plot_bottom + 16.0
        );
        if e < hi {
            for m in 2..10 {
                let mx = x(e as f64 + (m as f64).log10());
                let _ = writeln!(
                    s,
                    r##"<line x1="{mx:.1}" y1="{plot_top}" x2="{mx:.1}" y2="{plot_bottom}" stroke="#eee"/>"##
                );
            }
        }
    }
    // Groups: the row's label, then one bar per series from the left edge.
    let mut y = plot_top;
    for r in rows {
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-weight="bold">{}</text>"#,
            y + 13.0,
            xml_escape(&r.label)
        );
        let mut by = y + label_h;
        for ((_, color), d) in SERIES
            .iter()
            .zip([Some(r.fleetkv), Some(r.sqlite), r.floor])
        {
            let Some(d) = d else { continue };
            let end = x(log(d)).max(left + 1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{by}" width="{:.1}" height="{bar_h}" fill="{color}"/><text x="{:.1}" y="{}" font-size="11">{}</text>"#,
                end - left,
                end + 4.0,
                by + 10.0,
                xml_escape(&fmt(d))
            );
            by += bar_step;
        }
        y += group_h(r) + group_gap;
    }
    s.push_str("</svg>\n");
    s
}

/// `1 ns`, `10 ns`, `100 ns`, `1 µs`, … for 10^e nanoseconds.
fn decade_label(e: i32) -> String {
    let units = ["ns", "µs", "ms", "s"];
    let unit = (e.max(0) / 3).min(3);
    let mantissa = 10f64.powi(e - 3 * unit);
    format!("{mantissa} {}", units[unit as usize])
}
