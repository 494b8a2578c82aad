//! Properties of the routing engine over random worlds (sites, readers, cases, clock):
//! never an ineligible reader, never two readers, earliest deadline first, explanations
//! consistent with the eligibility facts, release and reassignment on shift end.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::civil::{Date, time};
use meridian_workflow::eligibility::{self, Presence, today};
use meridian_workflow::model::*;
use meridian_workflow::routing::{self, ClaimError, ReleaseWhy, World};
use proptest::prelude::*;

/// A small deterministic generator so one `u64` seed describes a whole world.
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
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const NOW: Millis = 1_795_000_000_000; // 2026-11-19
const JURIS: [&str; 3] = ["US-TX", "US-CA", "GB"];
const MODS: [&str; 3] = ["CT", "MR", "CR"];

fn date(g: &mut Gen) -> Date {
    if g.chance(20) {
        Date::new(2025, 1, 1).unwrap()
    } else {
        Date::new(2027, 12, 31).unwrap()
    }
}

fn world(seed: u64, n_sites: usize, n_readers: usize, n_cases: usize) -> World {
    let mut g = Gen(seed | 1);
    let mut sites = BTreeMap::new();
    for i in 0..n_sites {
        let coverage = if g.chance(20) {
            vec![Window {
                days: (0..7).collect(),
                start: time(g.below(24) as i8, 0, 0, 0),
                end: time(g.below(24) as i8, 0, 0, 0),
            }]
        } else {
            vec![]
        };
        let mut contract = Contract {
            coverage,
            prelim_accepted: g.chance(30),
            mode: if g.chance(25) { Mode::Pull } else { Mode::Push },
            unopened_minutes: 5 + g.below(20) as u32,
            ..Contract::default()
        };
        if g.chance(30) {
            contract.required_subspecialties.push("neuro".into());
        }
        let id = format!("site{i}");
        sites.insert(
            id.clone(),
            Site {
                id,
                name: String::new(),
                time_zone: "UTC".into(),
                jurisdiction: g.pick(&JURIS).to_string(),
                data_region: "us".into(),
                residency: if g.chance(30) {
                    vec!["us".into()]
                } else {
                    vec![]
                },
                hl7_facilities: vec![],
                contract,
                rvu: BTreeMap::new(),
                triage: vec![],
            },
        );
    }
    let site_ids: Vec<String> = sites.keys().cloned().collect();
    let mut readers = Vec::new();
    let mut online = HashSet::new();
    for i in 0..n_readers {
        let id = format!("r{i}");
        let mut licences = Vec::new();
        for j in JURIS {
            if g.chance(60) {
                licences.push(Licence {
                    jurisdiction: j.to_string(),
                    number: String::new(),
                    expires: date(&mut g),
                });
            }
        }
        let mut credentials = Vec::new();
        for s in &site_ids {
            if g.chance(70) {
                let scope = if g.chance(30) {
                    ReadScope::Prelim
                } else {
                    ReadScope::Final
                };
                credentials.push(Credential {
                    site: s.clone(),
                    scope,
                    expires: date(&mut g),
                });
            }
        }
        let shifts = match g.below(3) {
            0 => vec![],
            1 => vec![Window {
                days: (0..7).collect(),
                start: time(0, 0, 0, 0),
                end: time(0, 0, 0, 0),
            }],
            _ => vec![Window {
                days: (0..7).collect(),
                start: time(g.below(24) as i8, 0, 0, 0),
                end: time(g.below(24) as i8, 0, 0, 0),
            }],
        };
        if g.chance(80) {
            online.insert(id.clone());
        }
        readers.push(Reader {
            id,
            name: String::new(),
            time_zone: g
                .pick(&["UTC", "America/Chicago", "Asia/Kolkata"])
                .to_string(),
            region: g.pick(&["us", "in"]).to_string(),
            licences,
            credentials,
            subspecialties: if g.chance(40) {
                vec!["neuro".into()]
            } else {
                vec![]
            },
            modalities: MODS
                .iter()
                .filter(|_| g.chance(70))
                .map(|m| m.to_string())
                .collect(),
            shifts,
            exceptions: vec![],
            max_concurrent: 1 + g.below(4) as u32,
        });
    }
    let mut cases = Vec::new();
    for i in 0..n_cases {
        let state = match g.below(10) {
            0..=5 => State::Ready,
            6 | 7 => State::Assigned,
            8 => State::Opened,
            _ => State::Preliminary,
        };
        let assigned_to = matches!(state, State::Assigned | State::Opened)
            .then(|| format!("r{}", g.below(n_readers as u64)))
            .filter(|_| n_readers > 0);
        let state = if assigned_to.is_none() && state != State::Preliminary {
            State::Ready
        } else {
            state
        };
        cases.push(Case {
            study_uid: format!("1.2.{i}"),
            site: g.pick(&site_ids).clone(),
            state,
            priority: *g.pick(&Priority::ALL),
            protocol: None,
            subspecialty: g.chance(30).then(|| "neuro".to_string()),
            modality: g.pick(&MODS).to_string(),
            patient_key: format!("p{}", g.below(6)),
            rvu: 0.5 + g.below(4) as f64,
            base_at: NOW - g.below(3_600_000) as i64,
            deadline: NOW - 600_000 + g.below(7_200_000) as i64,
            reading_ms: 600_000,
            assigned_at: assigned_to
                .as_ref()
                .map(|_| NOW - g.below(1_800_000) as i64),
            opened_at: (state == State::Opened).then_some(NOW - 60_000),
            assigned_to,
            lock: None,
            released_by: vec![],
        });
    }
    World {
        sites,
        readers,
        online,
        cases,
    }
}

/// Applies a plan's releases to a copy of the world and replays its assignments in
/// order, checking each against the eligibility facts of that moment.
fn replay(w: &World, plan: &routing::Plan) -> Result<(), String> {
    let mut w = w.clone();
    let mut by_uid: HashMap<String, usize> = w
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| (c.study_uid.clone(), i))
        .collect();
    for r in &plan.releases {
        let c = &mut w.cases[by_uid[&r.study_uid]];
        if c.assigned_to.as_deref() != Some(r.reader.as_str()) || c.opened_at.is_some() {
            return Err(format!(
                "released {} which {} did not hold unopened",
                c.study_uid, r.reader
            ));
        }
        c.state = State::Ready;
        c.assigned_to = None;
        c.assigned_at = None;
        if matches!(r.why, ReleaseWhy::Unopened | ReleaseWhy::AtRisk) {
            c.released_by.push(r.reader.clone());
        }
    }
    let mut seen = HashSet::new();
    let mut last: Option<(Millis, Priority, Millis, String)> = None;
    for a in &plan.assignments {
        if !seen.insert(a.study_uid.clone()) {
            return Err(format!("{} assigned twice", a.study_uid));
        }
        let i = by_uid[&a.study_uid];
        let c = w.cases[i].clone();
        if c.state != State::Ready || c.assigned_to.is_some() {
            return Err(format!(
                "{} assigned while held by {:?}",
                c.study_uid, c.assigned_to
            ));
        }
        let key = (c.deadline, c.priority, c.base_at, c.study_uid.clone());
        if last.as_ref().is_some_and(|l| *l > key) {
            return Err(format!("{} assigned out of deadline order", c.study_uid));
        }
        last = Some(key);
        let presence = w.presence(NOW);
        let site = &w.sites[&c.site];
        let reader = w.reader(&a.reader).ok_or("unknown reader")?;
        let why = eligibility::check(reader, &presence[&a.reader], site, &c, today(NOW), true);
        if !why.is_empty() {
            return Err(format!(
                "{} given to ineligible {}: {why:?}",
                c.study_uid, a.reader
            ));
        }
        check_explanation(&w, &presence, &c, &a.explanation)?;
        let c = &mut w.cases[i];
        c.state = State::Assigned;
        c.assigned_to = Some(a.reader.clone());
        c.assigned_at = Some(NOW);
        by_uid.insert(c.study_uid.clone(), i);
    }
    // Whatever stayed unassigned had nobody eligible at the end of the pass (so no
    // reader took a later deadline while able to take it).
    let presence = w.presence(NOW);
    for (uid, e) in &plan.unassigned {
        let c = &w.cases[by_uid[uid]];
        let site = &w.sites[&c.site];
        for r in &w.readers {
            let why = eligibility::check(r, &presence[&r.id], site, c, today(NOW), true);
            if why.is_empty() {
                return Err(format!("{uid} left unassigned though {} is eligible", r.id));
            }
        }
        if e.chosen.is_some() || !e.eligible.is_empty() {
            return Err(format!(
                "{uid}: explanation of an unassigned case names a reader"
            ));
        }
    }
    Ok(())
}

fn check_explanation(
    w: &World,
    presence: &HashMap<String, Presence>,
    c: &Case,
    e: &routing::Explanation,
) -> Result<(), String> {
    let site = &w.sites[&c.site];
    let day = today(NOW);
    if e.eligible.first().map(|x| &x.reader) != e.chosen.as_ref() {
        return Err("chosen is not the best-ranked eligible reader".into());
    }
    for x in &e.eligible {
        let r = w.reader(&x.reader).ok_or("unknown")?;
        if !eligibility::check(r, &presence[&r.id], site, c, day, true).is_empty() {
            return Err(format!("explanation calls {} eligible", r.id));
        }
    }
    if e.eligible.len() > routing::MAX_ELIGIBLE || e.ineligible.len() > routing::MAX_GROUPS {
        return Err("explanation lists more than its caps".into());
    }
    let mut total = e.eligible.len() + e.more_eligible + e.more_ineligible;
    for g in &e.ineligible {
        total += g.count;
        for id in &g.readers {
            let r = w.reader(id).ok_or("unknown")?;
            let why = eligibility::check(r, &presence[&r.id], site, c, day, true);
            if why != g.reasons {
                return Err(format!(
                    "explanation says {id} fails {:?}, facts say {why:?}",
                    g.reasons
                ));
            }
        }
    }
    if total != w.readers.len() {
        return Err(format!(
            "explanation accounts for {total} of {} readers",
            w.readers.len()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn plans_are_safe(seed in any::<u64>(), s in 1usize..4, r in 0usize..10, c in 0usize..30) {
        let w = world(seed, s, r, c);
        let plan = routing::plan(&w, NOW);
        if let Err(e) = replay(&w, &plan) {
            return Err(TestCaseError::fail(e));
        }
        // Deterministic.
        prop_assert_eq!(&plan, &routing::plan(&w, NOW));
        // Only push-mode sites are assigned, and only while covered.
        for a in &plan.assignments {
            let c = w.cases.iter().find(|c| c.study_uid == a.study_uid).unwrap();
            prop_assert_eq!(w.sites[&c.site].contract.mode, Mode::Push);
            prop_assert!(routing::covered(&w.sites[&c.site], NOW));
        }
    }

    #[test]
    fn shift_end_releases_and_reassigns_elsewhere(seed in any::<u64>(), c in 1usize..20) {
        let mut w = world(seed, 2, 6, c);
        // r0 goes off shift: no shifts at all.
        w.readers[0].shifts.clear();
        w.readers[0].exceptions.clear();
        let plan = routing::plan(&w, NOW);
        for case in &w.cases {
            if case.state == State::Assigned && case.assigned_to.as_deref() == Some("r0") {
                prop_assert!(plan.releases.iter().any(|r| r.study_uid == case.study_uid
                    && r.why == ReleaseWhy::ReaderOffShift));
            }
        }
        prop_assert!(plan.assignments.iter().all(|a| a.reader != "r0"));
    }

    #[test]
    fn one_lock_per_case(seed in any::<u64>(), c in 1usize..20) {
        let w = world(seed, 2, 6, c);
        for case in &w.cases {
            let mut holders = HashSet::new();
            let mut w2 = w.clone();
            for r in &w.readers {
                if let Ok((lock, _)) = routing::claim(&w2, &r.id, &case.study_uid, NOW, 60_000) {
                    holders.insert(r.id.clone());
                    let c2 = w2.cases.iter_mut().find(|c| c.study_uid == case.study_uid).unwrap();
                    c2.lock = Some(lock);
                    c2.state = State::Opened;
                    c2.assigned_to = Some(r.id.clone());
                }
            }
            prop_assert!(holders.len() <= 1, "{:?} all hold {}", holders, case.study_uid);
        }
    }
}

#[test]
fn stat_overtakes_routine_and_licence_decides() {
    let mut w = world(7, 1, 0, 0);
    let site = w.sites.get_mut("site0").unwrap();
    site.jurisdiction = "US-TX".into();
    site.residency.clear();
    site.contract.mode = Mode::Push;
    site.contract.prelim_accepted = false;
    site.contract.required_subspecialties.clear();
    let always = Window {
        days: (0..7).collect(),
        start: time(0, 0, 0, 0),
        end: time(0, 0, 0, 0),
    };
    let exp = Date::new(2030, 1, 1).unwrap();
    let mk = |id: &str, juris: &str| Reader {
        id: id.into(),
        name: String::new(),
        time_zone: "UTC".into(),
        region: "us".into(),
        licences: vec![Licence {
            jurisdiction: juris.into(),
            number: "1".into(),
            expires: exp,
        }],
        credentials: vec![Credential {
            site: "site0".into(),
            scope: ReadScope::Final,
            expires: exp,
        }],
        subspecialties: vec![],
        modalities: vec!["CT".into()],
        shifts: vec![always.clone()],
        exceptions: vec![],
        max_concurrent: 1,
    };
    w.readers = vec![mk("texan", "US-TX"), mk("californian", "US-CA")];
    w.online = ["texan".to_string(), "californian".to_string()].into();
    let mk_case = |uid: &str, p: Priority, base: Millis| {
        let contract = Contract::default();
        Case {
            study_uid: uid.into(),
            site: "site0".into(),
            state: State::Ready,
            priority: p,
            protocol: None,
            subspecialty: None,
            modality: "CT".into(),
            patient_key: uid.into(),
            rvu: 1.0,
            base_at: base,
            deadline: meridian_workflow::sla::deadline(&contract, p, None, base),
            reading_ms: 600_000,
            assigned_to: None,
            assigned_at: None,
            opened_at: None,
            lock: None,
            released_by: vec![],
        }
    };
    // The routine study arrived an hour earlier; the STAT one still goes first.
    w.cases = vec![
        mk_case("1.1", Priority::Routine, NOW - 3_600_000),
        mk_case("1.2", Priority::Stat, NOW),
    ];
    let plan = routing::plan(&w, NOW);
    assert_eq!(plan.assignments.len(), 1, "{plan:#?}");
    assert_eq!(plan.assignments[0].study_uid, "1.2");
    assert_eq!(plan.assignments[0].reader, "texan");
    let e = &plan.assignments[0].explanation;
    assert_eq!(e.ineligible.len(), 1);
    assert_eq!(e.ineligible[0].readers, vec!["californian".to_string()]);
    assert_eq!(
        e.ineligible[0].reasons,
        vec![eligibility::Reason::NoLicence {
            jurisdiction: "US-TX".into()
        }]
    );
    assert!(e.summary.contains("texan"), "{}", e.summary);
    // The routine one waits (texan at cap) and is explained.
    assert_eq!(plan.unassigned.len(), 1);
    assert_eq!(plan.unassigned[0].0, "1.1");
    // The Californian cannot claim it either.
    assert!(matches!(
        routing::claim(&w, "californian", "1.1", NOW, 60_000),
        Err(ClaimError::Ineligible(_))
    ));
}

/// The random worlds above do exercise every branch (else the properties say little).
#[test]
fn generated_worlds_exercise_the_engine() {
    let (mut assigned, mut released, mut unassigned, mut flagged) = (0, 0, 0, 0);
    for seed in 1..300u64 {
        let w = world(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 2, 8, 25);
        let p = routing::plan(&w, NOW);
        assigned += p.assignments.len();
        released += p.releases.len();
        unassigned += p.unassigned.len();
        flagged += p.flags.len();
        replay(&w, &p).unwrap();
    }
    // Big worlds: explanations stay within their caps and still account for everyone.
    for seed in 1..20u64 {
        let w = world(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), 3, 80, 60);
        let p = routing::plan(&w, NOW);
        replay(&w, &p).unwrap();
        assigned += p.assignments.len();
    }
    assert!(assigned > 100, "assigned {assigned}");
    assert!(released > 50, "released {released}");
    assert!(unassigned > 100, "unassigned {unassigned}");
    assert!(flagged > 100, "flagged {flagged}");
}
