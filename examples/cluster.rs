//! The seed's multi-machine cluster flow on an embedded store, with threads
//! as machines: a self-naming cluster profile, a cluster filter, a leader race
//! by compare-and-swap on a shared param, leaders chosen by the manager, and a
//! workflow started on the leaders.
//!
//! `cargo run --example cluster [-- --data DIR --members N --leaders N]`
//! (a temporary store unless `--data` is given).

use std::thread;

use fleetkv::{Error, Filter, ListOptions, Machine, ParamDef, Profile, Store};
use serde_json::{json, Value};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let members: usize = arg("--members")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(12);
    let leaders: usize = arg("--leaders")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    let store = match arg("--data") {
        Some(dir) => Store::open(dir)?,
        None => Store::temporary()?,
    };
    let profile = "example";

    // Param definitions: roles default to false, my/data to "none".
    for (name, schema) in [
        (
            "cluster/manager",
            json!({"type": "boolean", "default": false}),
        ),
        (
            "cluster/leader",
            json!({"type": "boolean", "default": false}),
        ),
        ("cluster/profile", json!({"type": "string"})),
        ("cluster/filter", json!({"type": "string"})),
        ("my/data", json!({"type": "string", "default": "none"})),
    ] {
        if !store.params().exists(name) {
            store.params().create(ParamDef::new(name, schema))?;
        }
    }

    // The cluster profile names itself and holds the member filter.
    if !store.profiles().exists(profile) {
        let mut p = Profile::new(profile);
        p.params.insert("cluster/profile".into(), json!(profile));
        p.params.insert(
            "cluster/filter".into(),
            json!(format!("Profiles Eq {profile}")),
        );
        store.profiles().create(p)?;
    }
    let mut manager = Machine::new(format!("{profile}-manager"));
    manager.profiles.push(profile.into());
    manager.params.insert("cluster/manager".into(), json!(true));
    store.machines().create(manager)?;
    for i in 0..members {
        let mut m = Machine::new(format!("{profile}-member-{i:02}"));
        m.profiles.push(profile.into());
        store.machines().create(m)?;
    }
    println!("cluster {profile}: 1 manager, {members} members");

    // Every member races to write my/data; the seed's
    // `drpcli -r "$cl" profiles set $CLUSTER_PROFILE param my/data to ...` loop.
    let racers: Vec<_> = (0..members)
        .map(|i| {
            let store = store.clone();
            thread::spawn(move || -> Result<bool, Error> {
                let me = format!("{profile}-member-{i:02}");
                let cluster = store
                    .machines()
                    .get_param(&me, "cluster/profile", true)?
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                loop {
                    let cl = store.profiles().get_param(&cluster, "my/data", true)?;
                    if cl != Some(json!("none")) {
                        return Ok(false);
                    }
                    match store
                        .profiles()
                        .set_param_if(&cluster, "my/data", cl.as_ref(), json!(me))
                    {
                        Ok(_) => return Ok(true),
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            })
        })
        .collect();
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.join().map_err(|_| "racer panicked")??);
    }
    let data = store.profiles().get_param(profile, "my/data", false)?;
    println!(
        "my/data race: {winners} winner, my/data = {}",
        data.unwrap_or(Value::Null)
    );

    // The manager picks leaders at random among non-manager members, each by
    // compare-and-set from false, so a second run keeps the ones it has.
    let cluster_filter = Filter::parse(
        store
            .profiles()
            .get_param(profile, "cluster/filter", false)?
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or(""),
    )?;
    let candidates = store.machines().list(
        &Filter::parse("cluster/manager Eq false cluster/leader Eq false")?
            .and(cluster_filter.clone()),
        &ListOptions {
            slim: vec!["Params".into(), "Meta".into()],
            ..Default::default()
        },
    )?;
    let have = store
        .machines()
        .count(&Filter::parse("cluster/leader Eq true")?.and(cluster_filter.clone()))?
        as usize;
    let mut pool: Vec<String> = candidates
        .iter()
        .filter_map(|m| m["Uuid"].as_str().map(String::from))
        .collect();
    let mut chosen = have;
    while chosen < leaders && !pool.is_empty() {
        let pick = (uuid::Uuid::new_v4().as_u128() % pool.len() as u128) as usize;
        let uuid = pool.swap_remove(pick);
        if store
            .machines()
            .set_param_if(&uuid, "cluster/leader", Some(&json!(false)), json!(true))
            .is_ok()
        {
            chosen += 1;
        }
    }

    // Start a workflow on the leaders (never the manager) and mark them.
    let leader_filter = Filter::parse("cluster/manager Eq false cluster/leader Eq true")?
        .and(cluster_filter.clone());
    let found = store.machines().list(
        &leader_filter,
        &ListOptions {
            slim: vec!["Params".into(), "Meta".into()],
            ..Default::default()
        },
    )?;
    for m in &found {
        let uuid = m["Uuid"].as_str().unwrap_or_default();
        println!(
            "  starting k3s-machine-install on {} ({uuid})",
            m["Name"].as_str().unwrap_or_default()
        );
        store.machines().update(
            uuid,
            &json!({"Workflow": "k3s-machine-install", "Meta": {"icon": "anchor"}}),
        )?;
    }
    let count = |f: &str| -> Result<u64, Error> {
        store
            .machines()
            .count(&Filter::parse(f)?.and(cluster_filter.clone()))
    };
    println!(
        "members {}, leaders {}, workers {}, running k3s-machine-install {}",
        count("")?,
        count("cluster/leader Eq true")?,
        count("cluster/leader Eq false cluster/manager Eq false")?,
        count("Workflow Eq k3s-machine-install Meta.icon Eq anchor")?,
    );
    store.verify_indexes()?;
    Ok(())
}
