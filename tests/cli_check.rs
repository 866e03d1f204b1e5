//! `fleetkv check`: a sound store passes (exit 0), a damaged checkpoint or
//! record is reported naming what and where (exit 1), and `--repair`
//! rebuilds what the documents can rebuild.

mod common;

use common::embedded;

fn store_with_machines() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    for i in 0..5 {
        let (code, _, err) = embedded(&db, &["machines", "create", &format!("m{i}")], None);
        assert_eq!(code, 0, "{err}");
    }
    // A checkpoint on disk, as a long-running store has one.
    fleetkv::Store::open(&db).unwrap().checkpoint().unwrap();
    (dir, db)
}

#[test]
fn a_sound_store_passes() {
    let (_dir, db) = store_with_machines();
    let (code, out, err) = embedded(&db, &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("damage"), "{out}");
    for part in ["records", "checkpoint: read", "indexes", "change log"] {
        assert!(out.contains(part), "{part} missing from {out}");
    }
}

#[test]
fn a_flipped_checkpoint_is_damage_until_repaired() {
    let (_dir, db) = store_with_machines();
    let file = db.join("fleetkv.index");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, err) = embedded(&db, &["check"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("damage: checkpoint:"), "{out}");
    // A check changes nothing: the damage is still there.
    let (code, out, _) = embedded(&db, &["check"], None);
    assert_eq!(code, 1, "{out}");
    let (code, out, err) = embedded(&db, &["check", "--repair"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: repaired:"), "{out}");
    let (code, out, err) = embedded(&db, &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: checkpoint: read"), "{out}");
}

#[test]
fn a_record_that_does_not_decode_is_damage_naming_its_key() {
    let (_dir, db) = store_with_machines();
    {
        // sled's IO threads release the closed store's lock a moment after
        // the close returns (the store's own opens wait for it; raw sled
        // does not): retry while it is held, 5 s at most.
        let retry = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(&db) {
                Err(_) if std::time::Instant::now() < retry => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => break r.unwrap(),
            }
        };
        db.insert(b"m\0\0\0\x02", b"{not json".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let (code, out, err) = embedded(&db, &["check", "--repair"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("damage: records:"), "{out}");
    assert!(
        out.contains("m\\0\\0\\0\\x02") || out.contains("corrupt record"),
        "{out}"
    );
}

#[test]
fn no_store_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = embedded(&dir.path().join("nothing"), &["check"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no store there"), "{err}");
    assert!(
        !dir.path().join("nothing").exists(),
        "check created a store"
    );
}
