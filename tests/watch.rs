//! Change events, watches and waits through the public API.

use std::thread;
use std::time::{Duration, Instant};

use fleetkv::{Action, CountCondition, Error, Filter, Kind, Machine, Options, Profile, Store};
use serde_json::json;

#[macro_use]
mod engines;
use engines::Engine;

on_each_engine!(
    every_write_is_an_event_in_order,
    compacted_and_future_revisions_are_errors,
    filtered_watch_sees_members_leave_and_join,
    watch_wakes_on_write,
    count_wait_is_a_barrier,
    wait_machine_wakes_when_it_matches,
    concurrent_writers_and_watchers_lose_nothing,
    a_create_reads_back_as_it_was_however_the_machine_changed_since,
    a_watch_reads_revisions_of_many_events_whole_and_in_order,
);

fn member(name: &str, profile: &str) -> Machine {
    let mut m = Machine::new(name);
    m.profiles.push(profile.into());
    m
}

fn every_write_is_an_event_in_order(e: Engine) {
    let s = e.store();
    let start = s.revision() + 1;
    let mut w = s.watch(None, None, Some(start)).unwrap();
    s.profiles().create(Profile::new("p")).unwrap();
    let m = s.machines().create(member("a", "p")).unwrap();
    s.machines().set_param("a", "k", json!(1)).unwrap();
    s.machines()
        .import(vec![Machine::new("b"), Machine::new("c")])
        .unwrap();
    s.machines().delete("a").unwrap();
    let mut got = Vec::new();
    while let Some(e) = w.poll().unwrap() {
        got.push(e);
    }
    let summary: Vec<(Kind, Action, String)> = got
        .iter()
        .map(|e| (e.kind, e.action, e.key.clone()))
        .collect();
    let ua = m.uuid.to_string();
    assert_eq!(summary.len(), 6, "{summary:?}");
    assert_eq!(summary[0], (Kind::Profile, Action::Create, "p".into()));
    assert_eq!(summary[1], (Kind::Machine, Action::Create, ua.clone()));
    assert_eq!(summary[2], (Kind::Machine, Action::Update, ua.clone()));
    assert_eq!(summary[5], (Kind::Machine, Action::Delete, ua));
    // Revisions never go back; the import's two events share one revision.
    assert!(got
        .windows(2)
        .all(|w| (w[0].revision, w[0].seq) < (w[1].revision, w[1].seq)));
    assert_eq!(got[3].revision, got[4].revision);
    assert_eq!(got[2].object["Params"]["k"], json!(1));
    assert_eq!(got[2].previous.as_ref().unwrap()["Params"].get("k"), None);
    assert_eq!(got.last().unwrap().revision, s.revision());
    // Resuming from any revision gives the same tail, no gap, no duplicate.
    let mut again = s.watch(None, None, Some(got[2].revision)).unwrap();
    let mut tail = Vec::new();
    while let Some(e) = again.poll().unwrap() {
        tail.push(e);
    }
    assert_eq!(tail, got[2..].to_vec());
}

fn compacted_and_future_revisions_are_errors(e: Engine) {
    let s = e
        .store_with(Options {
            log_retain: 5,
            ..Options::default()
        })
        .unwrap();
    for i in 0..10 {
        s.machines().create(Machine::new(format!("m{i}"))).unwrap();
    }
    match s.watch(None, None, Some(1)) {
        Err(Error::Compacted { requested, oldest }) => {
            assert_eq!(requested, 1);
            assert_eq!(oldest, s.revision() - 4);
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("watch from a compacted revision"),
    }
    let oldest = s.revision() - 4;
    let mut w = s.watch(None, None, Some(oldest)).unwrap();
    let mut n = 0;
    while w.poll().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5);
    assert!(matches!(
        s.watch(None, None, Some(s.revision() + 2)),
        Err(Error::Invalid { .. })
    ));
    s.watch(None, None, Some(s.revision() + 1)).unwrap();
}

fn filtered_watch_sees_members_leave_and_join(e: Engine) {
    let s = e.store();
    s.profiles().create(Profile::new("p")).unwrap();
    s.profiles().create(Profile::new("q")).unwrap();
    s.machines().create(member("in", "p")).unwrap();
    s.machines().create(member("out", "q")).unwrap();
    let mut w = s
        .watch(
            Some(Kind::Machine),
            Some(Filter::parse("Profiles Eq p").unwrap()),
            None,
        )
        .unwrap();
    s.machines().set_param("out", "x", json!(1)).unwrap(); // never a member: not seen
    s.machines()
        .update("in", &json!({"Profiles": ["q"]}))
        .unwrap(); // leaves
    s.machines()
        .update("out", &json!({"Profiles": ["p"]}))
        .unwrap(); // joins
    s.profiles().set_param("p", "x", json!(2)).unwrap(); // another kind
    let names: Vec<String> = std::iter::from_fn(|| w.poll().unwrap())
        .map(|e| e.object["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["in", "out"]);
}

/// The calling thread's id, as `/proc` names it.
fn thread_id() -> String {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_string_lossy().into_owned()
}

/// Returns once thread `tid` of this process sleeps in a futex wait: a
/// waiter that has checked its condition and found it false parks there
/// (on the store's condition variable), so a write from now on must wake
/// it. Without this a write could land before the wait begins, and the wait
/// would return at once without testing any wake-up.
fn until_parked(tid: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wchan =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).unwrap_or_default();
        if wchan.starts_with("futex") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "thread {tid} never blocked (wchan {wchan:?})"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// How long the waits woken by a write may wait. A wait that reaches its
/// deadline re-checks and succeeds too, so the only sign that no write woke
/// it is that it lasted until then: [`woken`] tells the two apart.
const WAKE_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `wait` on a thread of its own and returns once it is parked.
fn parked<T: Send + 'static>(
    wait: impl FnOnce() -> T + Send + 'static,
) -> (Instant, thread::JoinHandle<T>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    let h = thread::spawn(move || {
        tx.send(thread_id()).unwrap();
        wait()
    });
    until_parked(&rx.recv().unwrap());
    (started, h)
}

/// The parked wait's result, once it has ended well before its deadline
/// (so a write woke it, not the deadline).
fn woken<T>((started, h): (Instant, thread::JoinHandle<T>)) -> T {
    let out = h.join().unwrap();
    assert!(
        started.elapsed() < WAKE_DEADLINE / 2,
        "the wait ran to its deadline: no write woke it"
    );
    out
}

fn watch_wakes_on_write(e: Engine) {
    let s = e.store();
    let mut w = s.watch(Some(Kind::Machine), None, None).unwrap();
    assert!(w.next_timeout(Duration::from_millis(20)).unwrap().is_none());
    let watcher = parked(move || w.next_timeout(WAKE_DEADLINE));
    s.machines().create(Machine::new("late")).unwrap();
    let e = woken(watcher).unwrap().expect("an event");
    assert_eq!(e.object["Name"], json!("late"));
}

fn count_wait_is_a_barrier(e: Engine) {
    let s = e.store();
    s.profiles().create(Profile::new("c")).unwrap();
    let f = Filter::parse("Profiles Eq c done Eq true").unwrap();
    for i in 0..5 {
        s.machines().create(member(&format!("m{i}"), "c")).unwrap();
    }
    let waiter = {
        let (s, f) = (s.clone(), f.clone());
        parked(move || s.count_wait(&f, CountCondition::AtLeast(5), WAKE_DEADLINE))
    };
    for i in 0..5 {
        assert!(!waiter.1.is_finished(), "the barrier opened at {i} of 5");
        s.machines()
            .set_param(&format!("m{i}"), "done", json!(true))
            .unwrap();
    }
    assert_eq!(woken(waiter).unwrap(), 5);
    let t = Instant::now();
    let r = s.count_wait(&f, CountCondition::Exactly(6), Duration::from_millis(100));
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        s.count_wait(&f, CountCondition::AtMost(5), Duration::ZERO)
            .unwrap(),
        5
    );
    assert!("~ 3".parse::<CountCondition>().is_err());
    assert!(">= x".parse::<CountCondition>().is_err());
    assert_eq!(
        ">=12".parse::<CountCondition>().unwrap(),
        CountCondition::AtLeast(12)
    );
    assert_eq!(
        "== 3".parse::<CountCondition>().unwrap(),
        CountCondition::Exactly(3)
    );
}

fn wait_machine_wakes_when_it_matches(e: Engine) {
    let s = e.store();
    s.machines().create(Machine::new("m")).unwrap();
    let waiter = {
        let s = s.clone();
        parked(move || {
            s.wait_machine(
                "m",
                &Filter::parse("Workflow Eq done").unwrap(),
                WAKE_DEADLINE,
            )
        })
    };
    s.machines()
        .update("m", &json!({"Workflow": "done"}))
        .unwrap();
    woken(waiter).unwrap();
    let r = s.wait_machine(
        "m",
        &Filter::parse("Workflow Eq never").unwrap(),
        Duration::from_millis(50),
    );
    assert!(matches!(r, Err(Error::Timeout)));
    assert!(matches!(
        s.wait_machine("nobody", &Filter::all(), Duration::from_millis(5)),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rev;
    {
        let s = Store::open(dir.path()).unwrap();
        s.machines().create(Machine::new("a")).unwrap();
        rev = s.revision();
    }
    let s = Store::open(dir.path()).unwrap();
    let mut w = s.watch(None, None, Some(rev)).unwrap();
    let e = w.poll().unwrap().expect("persisted event");
    assert_eq!(e.object["Name"], json!("a"));
}

fn concurrent_writers_and_watchers_lose_nothing(e: Engine) {
    let s = e.store();
    let from = s.revision() + 1;
    let watchers: Vec<_> = (0..8)
        .map(|_| {
            let mut w = s.watch(Some(Kind::Machine), None, Some(from)).unwrap();
            thread::spawn(move || {
                let mut names = Vec::new();
                while names.len() < 400 {
                    match w.next_timeout(Duration::from_secs(20)).unwrap() {
                        Some(e) => names.push(e.object["Name"].as_str().unwrap().to_string()),
                        None => panic!("lost events: have {} of 400", names.len()),
                    }
                }
                names
            })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            thread::spawn(move || {
                for i in 0..100 {
                    s.machines()
                        .create(Machine::new(format!("w{t}-{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut first: Option<Vec<String>> = None;
    for w in watchers {
        let names = w.join().unwrap();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 400, "duplicates or gaps");
        match &first {
            Some(f) => assert_eq!(&names, f, "every watcher sees one order"),
            None => first = Some(names),
        }
    }
}

/// A machine's create event names its record rather than copying it: a
/// watch behind it still gets each machine as it was created, whether the
/// machine is unchanged, changed by a param write (logged as an undo
/// patch), replaced, deleted, or deleted and created again.
fn a_create_reads_back_as_it_was_however_the_machine_changed_since(e: Engine) {
    let s = e.store();
    let start = s.revision() + 1;
    let machine = |i: u128, rack: i64| {
        let mut m = Machine::new(format!("n{i}"));
        m.uuid = uuid::Uuid::from_u128(0xfeed_0000_0000_4000_8000_0000_0000_0000 | i);
        m.params.insert("rack".into(), json!(rack));
        m
    };
    s.machines()
        .import((0..5).map(|i| machine(i, i as i64)).collect())
        .unwrap();
    s.machines().create(machine(5, 5)).unwrap();
    let as_created: Vec<serde_json::Value> = (0..6)
        .map(|i| serde_json::to_value(s.machines().get(&format!("n{i}")).unwrap()).unwrap())
        .collect();
    s.machines().set_param("n1", "rack", json!(11)).unwrap();
    s.machines().replace("n2", machine(2, 22)).unwrap();
    s.machines().delete("n3").unwrap();
    s.machines().delete("n4").unwrap();
    let again = s.machines().create(machine(4, 44)).unwrap();
    s.machines().set_param("n5", "rack", json!(55)).unwrap();
    s.machines().remove_param("n5", "rack").unwrap();
    // Twice: a watch that reads all at once, and one read again from each
    // create (the second starts past the changes it resolves through).
    let mut w = s.watch(Some(Kind::Machine), None, Some(start)).unwrap();
    let mut creates = Vec::new();
    while let Some(e) = w.poll().unwrap() {
        if e.action == Action::Create {
            creates.push(e);
        }
    }
    let mut want = as_created.clone();
    want.push(serde_json::to_value(&again).unwrap());
    let got: Vec<serde_json::Value> = creates.iter().map(|e| e.object.clone()).collect();
    assert_eq!(got, want);
    for (c, want) in creates.iter().zip(&want) {
        let mut w = s
            .watch(Some(Kind::Machine), None, Some(c.revision))
            .unwrap();
        let e = std::iter::from_fn(|| w.poll().unwrap())
            .find(|e| (e.revision, e.seq) == (c.revision, c.seq))
            .unwrap();
        assert_eq!(&e.object, want, "{}", c.key);
    }
}

/// A watch reads the log some hundreds of events at a time: revisions of
/// more events than that, read through a filter and one event per poll,
/// come whole, in order, once; the revision to resume from is always the
/// next one not delivered.
fn a_watch_reads_revisions_of_many_events_whole_and_in_order(e: Engine) {
    let s = e.store();
    let start = s.revision() + 1;
    for round in 0..3 {
        let machines = (0..700).map(|i| {
            let mut m = Machine::new(format!("r{round}-{i:03}"));
            m.params.insert("rack".into(), json!(i % 2));
            m
        });
        s.machines().import(machines.collect()).unwrap();
    }
    s.machines().set_param("r0-001", "rack", json!(0)).unwrap();
    let mut all = s.watch(Some(Kind::Machine), None, Some(start)).unwrap();
    let mut got = Vec::new();
    while let Some(e) = all.poll().unwrap() {
        let last_of_its_revision = e.seq == 699 || e.revision == start + 3;
        let resume = e.revision + u64::from(last_of_its_revision);
        assert_eq!(
            all.next_revision(),
            resume,
            "after {}.{}",
            e.revision,
            e.seq
        );
        got.push((e.revision, e.seq));
    }
    let want: Vec<(u64, u32)> = (0..3)
        .flat_map(|r| (0..700).map(move |q| (start + r, q)))
        .chain([(start + 3, 0)])
        .collect();
    assert_eq!(got, want);
    assert_eq!(all.next_revision(), s.revision() + 1);
    // Filtered: the odd racks' creates, then the write that moved r0-001.
    let odd = Filter::parse("rack Eq 1").unwrap();
    let mut w = s
        .watch(Some(Kind::Machine), Some(odd), Some(start))
        .unwrap();
    let names: Vec<String> = std::iter::from_fn(|| w.poll().unwrap())
        .map(|e| e.object["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3 * 350 + 1);
    assert_eq!(names.last().map(String::as_str), Some("r0-001"));
    // Resumed from the middle of a revision's events: from its start.
    let mut again = s.watch(Some(Kind::Machine), None, Some(start + 1)).unwrap();
    let first = again.poll().unwrap().unwrap();
    assert_eq!((first.revision, first.seq), (start + 1, 0));
}
