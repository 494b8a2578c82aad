//! Routing throughput over a large SYNTHETIC world (run by `bench/routing`).
//!
//! ```text
//! cargo run --release -p meridian-workflow --example routing_bench -- [options]
//!   --sites 50 --readers 1000 --cases 100000 --ready 4000 --runs 5 --new 1000 --claims 2000
//!   --seed 7 --now MILLIS
//!   --dump DIR   write DIR/onboarding.json (sites, readers) and DIR/cases.jsonl, then exit
//! ```
//!
//! The world: sites across ten jurisdictions (push and pull contracts, some with data
//! residency and required subspecialties), readers licensed in 1-5 jurisdictions,
//! credentialed at 5-20 sites (mostly where licensed), reading 3-6 modalities, with
//! shifts in their own time zones, max_concurrent 5-20 and about 70 % online. Open
//! cases: every reader holds between 0 and their cap (assigned or opened), `--ready`
//! cases wait (push and pull sites), and the rest are preliminary (read, awaiting the
//! final read; open but not counted as load), so the caps hold.
//!
//! It measures (a) one full `routing::plan` pass over that world, (b) the marginal cost
//! of N new ready cases arriving into the world after its first plan was applied,
//! (c) `routing::claim` calls, against the whole world and against the small world the
//! dispatch service builds per claim (the reader's held cases and the one study).

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::time::Instant;

use jiff::civil::{Date, Time};
use meridian_workflow::eligibility;
use meridian_workflow::model::*;
use meridian_workflow::routing::{self, Plan, ReleaseWhy, World};

/// xorshift64: one `u64` seed describes the whole world.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    /// `k` distinct items of `xs` (k ≤ len).
    fn sample<T: Clone>(&mut self, xs: &[T], k: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..xs.len()).collect();
        for i in 0..k.min(idx.len()) {
            let j = i + self.below((idx.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx[..k.min(xs.len())]
            .iter()
            .map(|&i| xs[i].clone())
            .collect()
    }
}

/// Jurisdiction, site time zone, data region, residency (empty = any reader region).
const JURIS: [(&str, &str, &str, &[&str]); 10] = [
    ("US-TX", "America/Chicago", "us", &[]),
    ("US-CA", "America/Los_Angeles", "us", &[]),
    ("US-NY", "America/New_York", "us", &[]),
    ("US-FL", "America/New_York", "us", &[]),
    ("US-IL", "America/Chicago", "us", &[]),
    ("US-WA", "America/Los_Angeles", "us", &[]),
    ("GB", "Europe/London", "eu", &["eu", "gb"]),
    ("IE", "Europe/Dublin", "eu", &["eu", "gb"]),
    ("AU-NSW", "Australia/Sydney", "au", &[]),
    ("SG", "Asia/Singapore", "sg", &[]),
];
/// Reader home: time zone and region.
const HOMES: [(&str, &str); 8] = [
    ("America/Chicago", "us"),
    ("America/New_York", "us"),
    ("America/Los_Angeles", "us"),
    ("Europe/London", "gb"),
    ("Europe/Berlin", "eu"),
    ("Australia/Sydney", "au"),
    ("Asia/Kolkata", "in"),
    ("Asia/Singapore", "sg"),
];
const MODS: [&str; 8] = ["CT", "MR", "CR", "DX", "US", "MG", "NM", "PT"];
/// Case modality mix (CT and radiographs dominate).
const CASE_MODS: [&str; 16] = [
    "CT", "CT", "CT", "CT", "MR", "MR", "CR", "CR", "CR", "DX", "DX", "US", "US", "MG", "NM", "PT",
];
const SUBS: [&str; 6] = ["neuro", "msk", "breast", "paediatric", "body", "chest"];

struct Opts {
    sites: usize,
    readers: usize,
    cases: usize,
    ready: usize,
    runs: usize,
    new: usize,
    claims: usize,
    seed: u64,
    now: Millis,
    dump: Option<std::path::PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        sites: 50,
        readers: 1000,
        cases: 100_000,
        ready: 4000,
        runs: 5,
        new: 1000,
        claims: 2000,
        seed: 7,
        // Thursday 2026-11-19 12:26 UTC: day in Europe, morning in the US, night in Asia.
        now: 1_795_580_000_000,
        dump: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let n = || -> usize {
            v.parse()
                .unwrap_or_else(|_| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--sites" => o.sites = n(),
            "--readers" => o.readers = n(),
            "--cases" => o.cases = n(),
            "--ready" => o.ready = n(),
            "--runs" => o.runs = n().max(1),
            "--new" => o.new = n(),
            "--claims" => o.claims = n(),
            "--seed" => o.seed = n() as u64,
            "--now" => o.now = v.parse().expect("--now needs milliseconds"),
            "--dump" => o.dump = Some(v.into()),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

fn far() -> Date {
    Date::new(2031, 1, 31).unwrap()
}

fn window(g: &mut Gen) -> Vec<Window> {
    let t = |h: u64| Time::new(h as i8, 0, 0, 0).unwrap();
    match g.below(10) {
        // 24/7 (teams that split the rota among themselves)
        0 | 1 => vec![Window {
            days: (0..7).collect(),
            start: t(0),
            end: t(0),
        }],
        // 12 h, seven days (night hawks, weekend cover)
        2..=5 => {
            let s = g.below(24);
            vec![Window {
                days: (0..7).collect(),
                start: t(s),
                end: t((s + 12) % 24),
            }]
        }
        // 8-10 h on weekdays, starting 06:00-14:00 local
        _ => {
            let s = g.range(6, 14);
            vec![Window {
                days: (0..5).collect(),
                start: t(s),
                end: t((s + g.range(8, 10)) % 24),
            }]
        }
    }
}

/// The world at `now`; `opened_only`: held cases are all opened (the HTTP bench, where
/// readers come online only as they sign in, so unopened ones would be released).
fn world(o: &Opts, opened_only: bool) -> World {
    let mut g = Gen(o.seed | 1);
    let now = o.now;
    let mut sites = BTreeMap::new();
    for i in 0..o.sites {
        let (jur, tz, region, residency) = JURIS[i % JURIS.len()];
        let mut contract = Contract {
            prelim_accepted: g.chance(25),
            mode: if g.chance(40) { Mode::Pull } else { Mode::Push },
            unopened_minutes: g.range(10, 30) as u32,
            ..Contract::default()
        };
        contract.protocol_sla_minutes.insert("stroke".into(), 20);
        if g.chance(20) {
            contract.required_subspecialties.push("breast".into());
        }
        if g.chance(15) {
            contract.required_subspecialties.push("paediatric".into());
        }
        let id = format!("site{i:02}");
        sites.insert(
            id.clone(),
            Site {
                id: id.clone(),
                name: format!("Site {i} (synthetic)"),
                time_zone: tz.into(),
                jurisdiction: jur.into(),
                data_region: region.into(),
                residency: residency.iter().map(|s| s.to_string()).collect(),
                hl7_facilities: vec![format!("RIS_{i:02}")],
                contract,
                rvu: BTreeMap::from([
                    ("CT".into(), 1.5),
                    ("MR".into(), 2.0),
                    ("CR".into(), 0.3),
                    ("DX".into(), 0.3),
                ]),
                triage: vec![],
            },
        );
    }
    let site_list: Vec<Site> = sites.values().cloned().collect();
    let jurs: Vec<&str> = JURIS.iter().map(|j| j.0).collect();

    let mut readers = Vec::new();
    let mut online = HashSet::new();
    for i in 0..o.readers {
        let id = format!("rdr{i:04}");
        let (tz, region) = *g.pick(&HOMES);
        let nlic = g.range(1, 5) as usize;
        let lic: Vec<&str> = g.sample(&jurs, nlic);
        let licences = lic
            .iter()
            .map(|j| Licence {
                jurisdiction: j.to_string(),
                number: format!("L-{id}-{j}"),
                expires: if g.chance(3) {
                    Date::new(2026, 1, 31).unwrap()
                } else {
                    far()
                },
            })
            .collect();
        // Credentials: mostly at sites where licensed, a few elsewhere (stale).
        let licensed: Vec<&Site> = site_list
            .iter()
            .filter(|s| lic.contains(&s.jurisdiction.as_str()))
            .collect();
        let ncred = g.range(5, 20) as usize;
        let mut cred_sites: Vec<String> = g
            .sample(&licensed, ncred)
            .iter()
            .map(|s| s.id.clone())
            .collect();
        while cred_sites.len() < ncred {
            let s = g.pick(&site_list).id.clone();
            if !cred_sites.contains(&s) {
                cred_sites.push(s);
            }
        }
        let offshore = region == "in";
        let credentials = cred_sites
            .into_iter()
            .map(|site| Credential {
                site,
                scope: if offshore && g.chance(60) || g.chance(5) {
                    ReadScope::Prelim
                } else {
                    ReadScope::Final
                },
                expires: if g.chance(3) {
                    Date::new(2026, 1, 31).unwrap()
                } else {
                    far()
                },
            })
            .collect();
        let nmod = g.range(3, 6) as usize;
        let mut modalities: Vec<String> = vec!["CT".into()];
        for m in g.sample(&MODS[1..], nmod - 1) {
            modalities.push(m.to_string());
        }
        let subspecialties = if g.chance(40) {
            let k = g.range(1, 2) as usize;
            g.sample(&SUBS, k).iter().map(|s| s.to_string()).collect()
        } else {
            vec![]
        };
        if g.chance(70) {
            online.insert(id.clone());
        }
        readers.push(Reader {
            id,
            name: format!("Reader {i} (synthetic)"),
            time_zone: tz.into(),
            region: region.into(),
            licences,
            credentials,
            subspecialties,
            modalities,
            shifts: window(&mut g),
            exceptions: vec![],
            max_concurrent: g.range(5, 20) as u32,
        });
    }

    let mut cases = Vec::with_capacity(o.cases);
    let mut n = 0usize;
    let mut case = |g: &mut Gen, site: &Site, modality: &str, state: State| -> Case {
        n += 1;
        let priority = match g.below(100) {
            0..=9 => Priority::Stat,
            10..=34 => Priority::Urgent,
            _ => Priority::Routine,
        };
        let protocol = (priority == Priority::Stat && modality == "CT" && g.chance(30))
            .then(|| "stroke".into());
        let minutes =
            meridian_workflow::sla::deadline(&site.contract, priority, protocol.as_deref(), 0)
                / MINUTE;
        // Ordered somewhere in the first 80 % of its turnaround: most on track, a few
        // at risk, none breached yet.
        let base_at = now - (g.below((minutes as u64 * 8 / 10).max(1)) as i64) * MINUTE;
        let subspecialty = match modality {
            "MG" => Some("breast".to_string()),
            _ if g.chance(8) => Some("paediatric".to_string()),
            _ if g.chance(15) => Some(g.pick(&SUBS).to_string()),
            _ => None,
        };
        Case {
            study_uid: format!("2.25.{}.{n}", 9_000_000 + o.seed),
            site: site.id.clone(),
            state,
            priority,
            protocol: protocol.clone(),
            subspecialty,
            modality: modality.into(),
            patient_key: format!("{}|BENCH|P{}", site.id, g.below(o.cases as u64 / 2 + 1)),
            rvu: site.rvu_of(None, modality),
            base_at,
            deadline: meridian_workflow::sla::deadline(
                &site.contract,
                priority,
                protocol.as_deref(),
                base_at,
            ),
            reading_ms: MINUTE * 15,
            assigned_to: None,
            assigned_at: None,
            opened_at: None,
            lock: None,
            released_by: vec![],
        }
    };
    // Held cases: each reader between 0 and their cap, at sites and in modalities they
    // read (eligibility at the time of assignment is not re-checked for held cases).
    for r in &readers {
        let held = g.below(u64::from(r.max_concurrent) + 1);
        for _ in 0..held {
            if cases.len() >= o.cases {
                break;
            }
            let site = &sites[&g.pick(&r.credentials).site];
            let m = g.pick(&r.modalities).clone();
            let opened = opened_only || g.chance(80);
            let mut c = case(
                &mut g,
                site,
                &m,
                if opened {
                    State::Opened
                } else {
                    State::Assigned
                },
            );
            let at = now - g.below(10) as i64 * MINUTE;
            c.assigned_to = Some(r.id.clone());
            c.assigned_at = Some(at);
            if opened {
                c.opened_at = Some(at + MINUTE / 2);
                c.lock = Some(Lock {
                    reader: r.id.clone(),
                    // a few locks ran out (the reader walked away)
                    expires: if g.chance(2) {
                        now - MINUTE
                    } else {
                        now + 20 * MINUTE
                    },
                });
            }
            cases.push(c);
        }
    }
    for _ in 0..o.ready.min(o.cases.saturating_sub(cases.len())) {
        let site = g.pick(&site_list);
        let m = *g.pick(&CASE_MODS);
        cases.push(case(&mut g, site, m, State::Ready));
    }
    while cases.len() < o.cases {
        let site = g.pick(&site_list);
        let m = *g.pick(&CASE_MODS);
        cases.push(case(&mut g, site, m, State::Preliminary));
    }
    World {
        sites,
        readers,
        online,
        cases,
    }
}

/// The world after the caller persisted `plan` (what the next pass sees).
fn apply(w: &mut World, plan: &Plan, now: Millis) {
    let idx: std::collections::HashMap<String, usize> = w
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| (c.study_uid.clone(), i))
        .collect();
    for uid in &plan.expired_locks {
        w.cases[idx[uid]].lock = None;
    }
    for r in &plan.releases {
        let c = &mut w.cases[idx[&r.study_uid]];
        c.state = State::Ready;
        c.assigned_to = None;
        c.assigned_at = None;
        if matches!(r.why, ReleaseWhy::Unopened | ReleaseWhy::AtRisk) {
            c.released_by.push(r.reader.clone());
        }
    }
    for a in &plan.assignments {
        let c = &mut w.cases[idx[&a.study_uid]];
        c.state = State::Assigned;
        c.assigned_to = Some(a.reader.clone());
        c.assigned_at = Some(now);
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn time_plans(w: &World, now: Millis, runs: usize) -> (f64, Vec<f64>, Plan) {
    let mut times = Vec::new();
    let mut last = Plan::default();
    for _ in 0..runs {
        let t = Instant::now();
        last = black_box(routing::plan(black_box(w), now));
        times.push(t.elapsed().as_secs_f64());
    }
    (median(times.clone()), times, last)
}

fn describe(w: &World, now: Millis) {
    let mut by_state: BTreeMap<State, usize> = BTreeMap::new();
    for c in &w.cases {
        *by_state.entry(c.state).or_default() += 1;
    }
    let presence = w.presence(now);
    let on_shift = presence.values().filter(|p| p.on_shift).count();
    let available = w
        .readers
        .iter()
        .filter(|r| {
            let p = &presence[&r.id];
            p.on_shift && p.online && p.load < r.max_concurrent
        })
        .count();
    let push = w
        .sites
        .values()
        .filter(|s| s.contract.mode == Mode::Push)
        .count();
    let ready_push = w
        .cases
        .iter()
        .filter(|c| c.state == State::Ready && w.sites[&c.site].contract.mode == Mode::Push)
        .count();
    let cap: u32 = w.readers.iter().map(|r| r.max_concurrent).sum();
    println!(
        "world (SYNTHETIC): {} sites ({} push, {} pull), {} readers ({} online, {} on shift, {} online+on shift+under cap; total cap {}), {} open cases {:?}, {} ready at push sites (routing candidates)",
        w.sites.len(),
        push,
        w.sites.len() - push,
        w.readers.len(),
        w.online.len(),
        on_shift,
        available,
        cap,
        w.cases.len(),
        by_state,
        ready_push
    );
}

fn plan_line(p: &Plan) -> String {
    format!(
        "{} assigned, {} with no eligible reader, {} released, {} flags, {} expired locks",
        p.assignments.len(),
        p.unassigned.len(),
        p.releases.len(),
        p.flags.len(),
        p.expired_locks.len()
    )
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

fn main() {
    let o = opts();
    let now = o.now;
    if let Some(dir) = &o.dump {
        let w = world(&o, true);
        std::fs::create_dir_all(dir).unwrap();
        let sites: Vec<serde_json::Value> = w
            .sites
            .values()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        let ob = serde_json::json!({"sites": sites, "readers": w.readers});
        std::fs::write(dir.join("onboarding.json"), ob.to_string()).unwrap();
        let mut out = String::new();
        for c in &w.cases {
            out.push_str(&serde_json::to_string(c).unwrap());
            out.push('\n');
        }
        std::fs::write(dir.join("cases.jsonl"), out).unwrap();
        let mut on: Vec<&String> = w.online.iter().collect();
        on.sort();
        std::fs::write(dir.join("online.json"), serde_json::to_string(&on).unwrap()).unwrap();
        describe(&w, now);
        println!("written to {}", dir.display());
        return;
    }

    let t = Instant::now();
    let w = world(&o, false);
    println!("generated in {:.1} s", t.elapsed().as_secs_f64());
    describe(&w, now);

    // (a) a full pass over the loaded world
    let (med, times, p0) = time_plans(&w, now, o.runs);
    let decisions = p0.assignments.len() + p0.unassigned.len() + p0.releases.len();
    let checks = (p0.assignments.len() + p0.unassigned.len()) * w.readers.len();
    println!(
        "(a) full pass: median {} (runs: {}); {}",
        ms(med),
        times
            .iter()
            .map(|x| format!("{:.1}", x * 1000.0))
            .collect::<Vec<_>>()
            .join(" "),
        plan_line(&p0)
    );
    println!(
        "    decisions {} (assignments + no-eligible + releases) -> {:.0} decisions/s; {} eligibility checks -> {:.2} M checks/s",
        decisions,
        decisions as f64 / med,
        checks,
        checks as f64 / med / 1e6
    );
    // Where the time goes: the pass without candidates or releases (presence, patients,
    // the escalation and SLA scan over every open case).
    let mut idle = w.clone();
    idle.cases
        .retain(|c| matches!(c.state, State::Opened | State::Preliminary));
    let (med_idle, _, _) = time_plans(&idle, now, o.runs);
    let presence: Vec<f64> = (0..o.runs)
        .map(|_| {
            let t = Instant::now();
            black_box(w.presence(now));
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "    of which: scan of {} opened/preliminary cases (no candidates, no releases) {} (World::presence alone {})",
        idle.cases.len(),
        ms(med_idle),
        ms(median(presence))
    );

    // (b) steady state after the first plan, then N new ready cases
    let mut steady = w.clone();
    apply(&mut steady, &p0, now);
    let (med_s, _, ps) = time_plans(&steady, now, o.runs);
    println!(
        "(b) steady pass (first plan applied): median {}; {}",
        ms(med_s),
        plan_line(&ps)
    );
    let mut g = Gen(o.seed.wrapping_mul(31) | 1);
    let push_sites: Vec<&Site> = steady
        .sites
        .values()
        .filter(|s| s.contract.mode == Mode::Push)
        .collect();
    for n_new in [o.new / 10, o.new] {
        if n_new == 0 || push_sites.is_empty() {
            continue;
        }
        let mut more = steady.clone();
        for i in 0..n_new {
            let site = *g.pick(&push_sites);
            let m = *g.pick(&CASE_MODS);
            let mut c = steady.cases[0].clone();
            c.study_uid = format!("2.25.{}.new.{i}", 9_000_000 + o.seed);
            c.site = site.id.clone();
            c.modality = m.into();
            c.state = State::Ready;
            c.priority = Priority::Routine;
            c.protocol = None;
            c.subspecialty = None;
            c.base_at = now;
            c.deadline = meridian_workflow::sla::deadline(&site.contract, c.priority, None, now);
            c.assigned_to = None;
            c.assigned_at = None;
            c.opened_at = None;
            c.lock = None;
            c.patient_key = format!("{}|BENCH|NEW{i}", site.id);
            more.cases.push(c);
        }
        let (med_n, _, pn) = time_plans(&more, now, o.runs);
        let extra = med_n - med_s;
        println!(
            "    + {n_new} new ready cases: median {} ({}); marginal {} per new case -> {:.0} decisions/s",
            ms(med_n),
            plan_line(&pn),
            if extra > 0.0 {
                format!("{:.3} ms", extra * 1000.0 / n_new as f64)
            } else {
                "n/a (below noise)".into()
            },
            if extra > 0.0 {
                n_new as f64 / extra
            } else {
                f64::NAN
            }
        );
    }

    // (c) claims: a reader takes a ready case (success or refusal, both are decisions)
    let ready: Vec<usize> = steady
        .cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.state == State::Ready)
        .map(|(i, _)| i)
        .collect();
    if !ready.is_empty() && o.claims > 0 {
        let presence = steady.presence(now);
        let day = eligibility::today(now);
        let pairs: Vec<(String, String)> = (0..o.claims)
            .map(|_| {
                let c = &steady.cases[*g.pick(&ready)];
                // half the time a reader who may take it (if any), else anyone
                let site = &steady.sites[&c.site];
                let able: Vec<&Reader> = steady
                    .readers
                    .iter()
                    .filter(|r| {
                        eligibility::check(r, &presence[&r.id], site, c, day, true).is_empty()
                    })
                    .collect();
                let r = if g.chance(50) && !able.is_empty() {
                    *g.pick(&able)
                } else {
                    g.pick(&steady.readers)
                };
                (r.id.clone(), c.study_uid.clone())
            })
            .collect();
        let lock_ms = 30 * MINUTE;
        let n_full = (o.claims / 10).max(1);
        let mut rates_full = Vec::new();
        let mut ok_full = 0;
        for _ in 0..o.runs {
            let t = Instant::now();
            ok_full = 0;
            for (r, u) in &pairs[..n_full] {
                if black_box(routing::claim(&steady, r, u, now, lock_ms)).is_ok() {
                    ok_full += 1;
                }
            }
            rates_full.push(n_full as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "(c) claim against the whole world ({} cases): median {:.0} claims/s ({} of {} granted)",
            steady.cases.len(),
            median(rates_full),
            ok_full,
            n_full
        );
        // As the dispatch service calls it: the reader, the case's site, the reader's
        // held cases and the case (the store query results, built per claim).
        let by_uid: std::collections::HashMap<&str, &Case> = steady
            .cases
            .iter()
            .map(|c| (c.study_uid.as_str(), c))
            .collect();
        let mut rates_only = Vec::new();
        let smalls: Vec<World> = pairs
            .iter()
            .map(|(r, u)| {
                let c = by_uid[u.as_str()];
                let mut cases: Vec<Case> = steady
                    .cases
                    .iter()
                    .filter(|x| {
                        x.assigned_to.as_deref() == Some(r.as_str())
                            && matches!(x.state, State::Assigned | State::Opened)
                    })
                    .cloned()
                    .collect();
                cases.push(c.clone());
                World {
                    sites: BTreeMap::from([(c.site.clone(), steady.sites[&c.site].clone())]),
                    readers: vec![steady.reader(r).unwrap().clone()],
                    online: HashSet::from([r.clone()]),
                    cases,
                }
            })
            .collect();
        let mut ok_small = 0;
        for _ in 0..o.runs {
            let t = Instant::now();
            ok_small = 0;
            for ((r, u), sw) in pairs.iter().zip(&smalls) {
                if black_box(routing::claim(sw, r, u, now, lock_ms)).is_ok() {
                    ok_small += 1;
                }
            }
            rates_only.push(pairs.len() as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "    claim as dispatch calls it (world = the reader, the site, the reader's held cases + the study): median {:.0} claims/s ({} of {} granted)",
            median(rates_only),
            ok_small,
            pairs.len()
        );
    }
}
