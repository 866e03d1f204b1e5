//! A deterministic fleet for the membership benchmarks and report, and the
//! peers fleetkv is measured against: a full reference-evaluator scan, SQLite
//! with expression indexes and a membership table, and raw roaring bitmaps
//! (the floor).
#![allow(dead_code)]

use fleetkv::{Filter, Machine, ParamDef, Profile, Store};
use roaring::RoaringBitmap;
use rusqlite::{functions::FunctionFlags, params, Connection};
use serde_json::json;

pub const CLUSTERS: usize = 1000;

/// The membership queries: five of the index issue, and a regex with a
/// literal prefix (Q6), where SQLite walks the index range of that prefix.
pub const QUERIES: [(&str, &str); 6] = [
    ("Q1", "Profiles Eq cluster-7"),
    (
        "Q2",
        "cluster/manager Eq false cluster/leader Eq true Profiles Eq cluster-7",
    ),
    (
        "Q3",
        "Profiles In cluster-1,cluster-2 And Not cluster/leader Eq true",
    ),
    ("Q4", "rack Between 10 20"),
    ("Q5", "Name Re ^node-00[0-9]+$"),
    ("Q6", "Name Re ^node-00[0-4]"),
];

pub fn definitions() -> Vec<ParamDef> {
    vec![
        ParamDef::new(
            "cluster/manager",
            json!({"type": "boolean", "default": false}),
        ),
        ParamDef::new(
            "cluster/leader",
            json!({"type": "boolean", "default": false}),
        ),
        ParamDef::new("rack", json!({"type": "integer"})),
        ParamDef::new("cluster/profile", json!({"type": "string"})),
        ParamDef::new("cluster/filter", json!({"type": "string"})),
    ]
}

pub fn profile(c: usize) -> Profile {
    let mut p = Profile::new(format!("cluster-{c}"));
    p.params.insert("cluster/profile".into(), json!(p.name));
    p.params.insert(
        "cluster/filter".into(),
        json!(format!("Profiles Eq {}", p.name)),
    );
    p
}

/// Machine `i`: in cluster `i % 1000`; the first of each cluster is its
/// manager, the second its leader; ~10 params, a numeric `rack`, Meta `icon`.
pub fn machine(i: usize) -> Machine {
    let mut m = Machine::new(format!("node-{i:07}"));
    m.uuid = uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i as u128);
    m.address = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    m.profiles.push(format!("cluster-{}", i % CLUSTERS));
    let p = &mut m.params;
    match i / CLUSTERS {
        0 => {
            p.insert("cluster/manager".into(), json!(true));
        }
        1 => {
            p.insert("cluster/leader".into(), json!(true));
        }
        _ => {}
    }
    p.insert("rack".into(), json!((i / 40) % 50));
    p.insert("hw/cores".into(), json!([8, 16, 32, 64][i % 4]));
    p.insert("hw/memory-gb".into(), json!(32 * (1 + i % 8)));
    p.insert(
        "os/family".into(),
        json!(["ubuntu", "rhel", "debian"][i % 3]),
    );
    p.insert(
        "bios/version".into(),
        json!(format!("1.{}.{}", i % 7, i % 13)),
    );
    p.insert("site".into(), json!(format!("dc-{}", i % 5)));
    p.insert(
        "power/state".into(),
        json!(if i.is_multiple_of(17) { "off" } else { "on" }),
    );
    p.insert("serial".into(), json!(format!("SN{i:08}")));
    m.meta.insert(
        "icon".into(),
        if i.is_multiple_of(10) {
            "anchor"
        } else {
            "server"
        }
        .into(),
    );
    m
}

/// Loads `n` machines into a fresh store at `dir` (temporary if `None`),
/// opened buffered (`durable: false`): the write figures are the buffered
/// ones, and a load need not wait for the disk after every write.
pub fn fleetkv(n: usize, dir: Option<&std::path::Path>) -> Store {
    let buffered = fleetkv::Options {
        durable: false,
        ..fleetkv::Options::default()
    };
    let s = match dir {
        Some(d) => Store::open_with(d, buffered).unwrap(),
        None => Store::temporary().unwrap(),
    };
    for d in definitions() {
        s.params().create(d).unwrap();
    }
    for c in 0..CLUSTERS {
        s.profiles().create(profile(c)).unwrap();
    }
    let mut start = 0;
    while start < n {
        let end = (start + 10_000).min(n);
        s.machines()
            .import((start..end).map(machine).collect())
            .unwrap();
        start = end;
    }
    s
}

pub fn filter(q: &str) -> Filter {
    Filter::parse(q).unwrap()
}

/// SQLite as a careful engineer would set it up: documents as JSON, a
/// machine–profile membership table, expression indexes on queried params.
pub struct Sqlite {
    pub conn: Connection,
}

pub const SQL_COUNT: [&str; 6] = [
    "SELECT count(*) FROM machine_profiles WHERE profile = 'cluster-7'",
    "SELECT count(*) FROM machine_profiles mp JOIN machines m ON m.id = mp.machine_id
       WHERE mp.profile = 'cluster-7'
         AND coalesce(json_extract(m.doc, '$.Params.\"cluster/manager\"'), 0) = 0
         AND coalesce(json_extract(m.doc, '$.Params.\"cluster/leader\"'), 0) = 1",
    "SELECT count(*) FROM machines m WHERE m.id IN
        (SELECT machine_id FROM machine_profiles WHERE profile IN ('cluster-1', 'cluster-2'))
       AND NOT coalesce(json_extract(m.doc, '$.Params.\"cluster/leader\"'), 0) = 1",
    "SELECT count(*) FROM machines WHERE json_extract(doc, '$.Params.rack') BETWEEN 10 AND 20",
    "SELECT count(*) FROM machines WHERE name REGEXP '^node-00[0-9]+$'",
    // The literal prefix as a range of the UNIQUE index on name.
    "SELECT count(*) FROM machines WHERE name >= 'node-00' AND name < 'node-01' AND name REGEXP '^node-00[0-4]'",
];

/// Counts per value (`group-by` + `range-only`): name, filter, key, and the
/// same `GROUP BY` in SQLite (over its expression indexes where they exist).
pub const GROUPS: [(&str, &str, &str, &str); 3] = [
    (
        "G1 one cluster's leaders",
        "Profiles Eq cluster-7",
        "Params.cluster/leader",
        "SELECT coalesce(json_extract(m.doc, '$.Params.\"cluster/leader\"'), 0) v, count(*)
           FROM machine_profiles mp JOIN machines m ON m.id = mp.machine_id
          WHERE mp.profile = 'cluster-7' GROUP BY v ORDER BY v",
    ),
    (
        "G2 every leader flag",
        "",
        "Params.cluster/leader",
        "SELECT coalesce(json_extract(doc, '$.Params.\"cluster/leader\"'), 0) v, count(*)
           FROM machines GROUP BY v ORDER BY v",
    ),
    (
        "G3 machines per rack",
        "",
        "Params.rack",
        "SELECT json_extract(doc, '$.Params.rack') v, count(*) FROM machines GROUP BY v ORDER BY v",
    ),
];

/// The same queries listing 100 documents without Params and Meta.
pub const SQL_LIST: [&str; 6] = [
    "SELECT json_remove(m.doc, '$.Params', '$.Meta') FROM machine_profiles mp JOIN machines m ON m.id = mp.machine_id
       WHERE mp.profile = 'cluster-7' ORDER BY m.id LIMIT 100",
    "SELECT json_remove(m.doc, '$.Params', '$.Meta') FROM machine_profiles mp JOIN machines m ON m.id = mp.machine_id
       WHERE mp.profile = 'cluster-7'
         AND coalesce(json_extract(m.doc, '$.Params.\"cluster/manager\"'), 0) = 0
         AND coalesce(json_extract(m.doc, '$.Params.\"cluster/leader\"'), 0) = 1 ORDER BY m.id LIMIT 100",
    "SELECT json_remove(m.doc, '$.Params', '$.Meta') FROM machines m WHERE m.id IN
        (SELECT machine_id FROM machine_profiles WHERE profile IN ('cluster-1', 'cluster-2'))
       AND NOT coalesce(json_extract(m.doc, '$.Params.\"cluster/leader\"'), 0) = 1 ORDER BY m.id LIMIT 100",
    "SELECT json_remove(m.doc, '$.Params', '$.Meta') FROM machines m
       WHERE json_extract(m.doc, '$.Params.rack') BETWEEN 10 AND 20 ORDER BY m.id LIMIT 100",
    "SELECT json_remove(m.doc, '$.Params', '$.Meta') FROM machines m
       WHERE m.name REGEXP '^node-00[0-9]+$' ORDER BY m.id LIMIT 100",
    "SELECT json_remove(m.doc, '$.Params', '$.Meta') FROM machines m
       WHERE m.name >= 'node-00' AND m.name < 'node-01' AND m.name REGEXP '^node-00[0-4]' ORDER BY m.id LIMIT 100",
];

impl Sqlite {
    pub fn load(n: usize) -> Sqlite {
        let conn = Connection::open_in_memory().unwrap();
        conn.create_scalar_function(
            "regexp",
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| {
                let re = ctx.get_or_create_aux(
                    0,
                    |vr| -> Result<regex::Regex, Box<dyn std::error::Error + Send + Sync>> {
                        Ok(regex::Regex::new(vr.as_str()?)?)
                    },
                )?;
                let text = ctx.get::<String>(1)?;
                Ok(re.is_match(&text))
            },
        )
        .unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TABLE machines (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
             CREATE TABLE machine_profiles (machine_id INTEGER NOT NULL, profile TEXT NOT NULL, PRIMARY KEY (profile, machine_id)) WITHOUT ROWID;",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut ins = tx
                .prepare("INSERT INTO machines (id, name, doc) VALUES (?1, ?2, ?3)")
                .unwrap();
            let mut mp = tx
                .prepare("INSERT INTO machine_profiles (machine_id, profile) VALUES (?1, ?2)")
                .unwrap();
            for i in 0..n {
                let m = machine(i);
                ins.execute(params![
                    i as i64,
                    m.name,
                    serde_json::to_string(&m).unwrap()
                ])
                .unwrap();
                for p in &m.profiles {
                    mp.execute(params![i as i64, p]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
        conn.execute_batch(
            "CREATE INDEX m_leader ON machines (coalesce(json_extract(doc, '$.Params.\"cluster/leader\"'), 0));
             CREATE INDEX m_manager ON machines (coalesce(json_extract(doc, '$.Params.\"cluster/manager\"'), 0));
             CREATE INDEX m_rack ON machines (json_extract(doc, '$.Params.rack'));
             ANALYZE;",
        )
        .unwrap();
        Sqlite { conn }
    }

    pub fn count(&self, i: usize) -> u64 {
        self.conn
            .prepare_cached(SQL_COUNT[i])
            .unwrap()
            .query_row([], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    /// The counts of a `GROUPS` query, in value order.
    pub fn group(&self, i: usize) -> Vec<u64> {
        let mut st = self.conn.prepare_cached(GROUPS[i].3).unwrap();
        let rows = st.query_map([], |r| r.get::<_, i64>(1)).unwrap();
        rows.map(|r| r.unwrap() as u64).collect()
    }

    pub fn list(&self, i: usize) -> usize {
        let mut st = self.conn.prepare_cached(SQL_LIST[i]).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        let docs: Vec<serde_json::Value> = rows
            .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
            .collect();
        docs.len()
    }
}

/// Plain roaring bitmaps of the same sets, built straight from the
/// generator: the floor no index can beat.
pub struct Floor {
    pub cluster: Vec<RoaringBitmap>,
    pub leader: RoaringBitmap,
    pub not_manager: RoaringBitmap,
    pub racks: Vec<RoaringBitmap>,
    /// Names in order, for Q5's prefix-range-plus-regex walk.
    pub names: std::collections::BTreeMap<String, u32>,
}

impl Floor {
    pub fn build(n: usize) -> Floor {
        let mut f = Floor {
            cluster: vec![RoaringBitmap::new(); CLUSTERS],
            leader: RoaringBitmap::new(),
            not_manager: RoaringBitmap::new(),
            racks: vec![RoaringBitmap::new(); 50],
            names: Default::default(),
        };
        for i in 0..n {
            let id = i as u32;
            f.cluster[i % CLUSTERS].insert(id);
            if i / CLUSTERS == 1 {
                f.leader.insert(id);
            }
            if i / CLUSTERS != 0 {
                f.not_manager.insert(id);
            }
            f.racks[(i / 40) % 50].insert(id);
            f.names.insert(format!("node-{i:07}"), id);
        }
        f
    }

    pub fn count(&self, q: usize) -> u64 {
        match q {
            0 => self.cluster[7].len(),
            1 => (&self.cluster[7] & &self.leader).intersection_len(&self.not_manager),
            2 => (&self.cluster[1] | &self.cluster[2]).difference_len(&self.leader),
            3 => {
                let mut u = RoaringBitmap::new();
                for r in &self.racks[10..=20] {
                    u |= r;
                }
                u.len()
            }
            5 => (0..5)
                .map(|d| {
                    let prefix = format!("node-00{d}");
                    self.names
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .count() as u64
                })
                .sum(),
            _ => {
                let re = regex::Regex::new("^node-00[0-9]+$").unwrap();
                self.names
                    .range("node-00".to_string()..)
                    .take_while(|(k, _)| k.starts_with("node-00"))
                    .filter(|(k, _)| re.is_match(k))
                    .count() as u64
            }
        }
    }
}
