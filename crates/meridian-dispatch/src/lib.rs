//! The workflow service: applies the pure rules of `meridian-workflow` to the stored
//! facts of `meridian-store`. It takes orders in (from any adapter: HL7, FHIR, web),
//! turns stable studies into cases (reconciliation, triage, deadline), runs routing
//! passes, takes claims and releases, and feeds case events to live listeners.
//!
//! Every change of a case is one conditional write (optimistic version) with its
//! timestamped events, so several nodes may run passes over one database and a study
//! still has exactly one reader. The live feed tails the `case_events` table, so a
//! listener on any node sees changes made on every node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_store::workflow::{CaseEvent, OrderRow, StoredCase};
use meridian_store::{Store, StoreError, now_ms};
use meridian_workflow::model::{Case, MINUTE, Millis, Mode, Priority, Reader, Site, State};
use meridian_workflow::reconcile::{self, Match, OrderFacts};
use meridian_workflow::routing::{self, ClaimError, World};
use meridian_workflow::{eligibility, sla, state, triage};
use serde::Serialize;
use tokio::sync::{Mutex, Notify, broadcast};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("the study changed meanwhile; try again")]
    Conflict,
}

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How long a reading lock lasts without renewal.
    pub lock_ms: Millis,
    /// A reader seen within this long is online.
    pub online_ms: Millis,
    /// Routing pass period.
    pub pass_every: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            lock_ms: 30 * MINUTE,
            online_ms: 2 * MINUTE,
            pass_every: Duration::from_secs(5),
        }
    }
}

/// Expected reading time by modality (for the at-risk test).
pub fn reading_ms(modality: &str) -> Millis {
    MINUTE
        * match modality {
            "CT" => 15,
            "MR" => 20,
            "CR" | "DX" => 5,
            "US" => 10,
            "MG" => 10,
            "NM" | "PT" => 20,
            _ => 10,
        }
}

/// Modalities that are not what a reader reads (derived objects).
const NON_IMAGE: [&str; 6] = ["SR", "PR", "KO", "SEG", "REG", "DOC"];

/// What one routing pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassStats {
    pub open: usize,
    pub assigned: usize,
    pub released: usize,
    pub unassigned: usize,
    pub conflicts: usize,
}

/// A reader's worklist.
#[derive(Debug, Clone, Serialize)]
pub struct Worklist {
    pub reader: String,
    pub assigned: Vec<Item>,
    pub claimable: Vec<Item>,
    pub counts: Counts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub assigned: usize,
    pub claimable: usize,
    pub stat: usize,
    pub urgent: usize,
    pub routine: usize,
}

/// A case as a list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    #[serde(flatten)]
    pub case: StoredCase,
    pub sla: sla::SlaState,
    pub minutes_left: i64,
    pub locked_by: Option<String>,
    pub summary: Option<String>,
}

fn item(c: StoredCase, now: Millis) -> Item {
    let summary = c
        .explanation
        .as_ref()
        .and_then(|e| e.get("summary"))
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    Item {
        sla: sla::state(&c.case, now),
        minutes_left: (c.case.deadline - now) / MINUTE,
        locked_by: c.case.locked_by(now).map(str::to_owned),
        summary,
        case: c,
    }
}

/// Filters of a worklist or the operations view.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    pub site: Option<String>,
    pub modality: Option<String>,
    pub priority: Option<Priority>,
    pub status: Option<State>,
}

impl Filter {
    fn keeps(&self, c: &Case) -> bool {
        self.site.as_ref().is_none_or(|s| *s == c.site)
            && self
                .modality
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&c.modality))
            && self.priority.is_none_or(|p| p == c.priority)
            && self.status.is_none_or(|s| s == c.state)
    }
}

pub struct Dispatch {
    store: Store,
    cfg: DispatchConfig,
    feed: broadcast::Sender<CaseEvent>,
    wake: Notify,
    /// One local pass at a time (other nodes are kept out by case versions).
    pass: Mutex<()>,
    /// When this node last wrote each reader's presence.
    beats: Mutex<HashMap<String, Millis>>,
    sites_cache: Mutex<Option<(Millis, Arc<Vec<Site>>)>>,
    readers_cache: Mutex<HashMap<String, (Millis, Reader)>>,
}

/// How long worklists use a cached site or reader profile.
pub const PROFILE_TTL_MS: Millis = 2_000;

/// How often a reader's presence is written (at most), per node.
pub const HEARTBEAT_WRITE_MS: Millis = 30_000;

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Parses an HL7 TS (`YYYYMMDD[HHMM[SS[.S…]]][+/-ZZZZ]`) in time zone `tz`.
pub fn parse_hl7_ts(ts: &str, tz: &str) -> Option<Millis> {
    let ts = ts.trim();
    let (main, offset) = match ts.find(['+', '-']) {
        Some(i) if i >= 8 => (&ts[..i], Some(&ts[i..])),
        _ => (ts, None),
    };
    let main = main.split('.').next().unwrap_or(main);
    if main.len() < 8 || !main.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| main.get(a..b).and_then(|s| s.parse::<i16>().ok());
    let date = jiff::civil::Date::new(n(0, 4)?, n(4, 6)? as i8, n(6, 8)? as i8).ok()?;
    let time = jiff::civil::Time::new(
        n(8, 10).unwrap_or(0) as i8,
        n(10, 12).unwrap_or(0) as i8,
        n(12, 14).unwrap_or(0) as i8,
        0,
    )
    .ok()?;
    let dt = date.to_datetime(time);
    let zoned = match offset {
        // `+HHMM`/`-HHMM`: checked ASCII before slicing (the text is from the wire).
        Some(o) if o.len() == 5 && o[1..].bytes().all(|b| b.is_ascii_digit()) => {
            let sign: i32 = if o.starts_with('-') { -1 } else { 1 };
            let h: i32 = o[1..3].parse().ok()?;
            let m: i32 = o[3..5].parse().ok()?;
            let off = jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()?;
            dt.to_zoned(jiff::tz::TimeZone::fixed(off)).ok()?
        }
        Some(_) => return None,
        None => dt
            .to_zoned(meridian_workflow::shift::zone(tz).unwrap_or(jiff::tz::TimeZone::UTC))
            .ok()?,
    };
    Some(zoned.timestamp().as_millisecond())
}

impl Dispatch {
    pub fn new(store: Store, cfg: DispatchConfig) -> Arc<Dispatch> {
        let (feed, _) = broadcast::channel(4096);
        Arc::new(Dispatch {
            store,
            cfg,
            feed,
            wake: Notify::new(),
            pass: Mutex::new(()),
            beats: Mutex::new(HashMap::new()),
            sites_cache: Mutex::new(None),
            readers_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.cfg
    }

    /// Live case events (from every node).
    pub fn subscribe(&self) -> broadcast::Receiver<CaseEvent> {
        self.feed.subscribe()
    }

    /// Asks for a routing pass soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs forever: cases for stable studies, routing passes, the live feed.
    pub async fn run(self: Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.tail_feed().await });
        let mut events = self.store.subscribe();
        loop {
            tokio::select! {
                ev = events.recv() => {
                    if let Ok(ev) = ev && ev.kind == "stable" {
                        if let Err(e) = self.on_stable(&ev.study_uid).await {
                            tracing::warn!(error = %e, "case creation failed");
                        }
                        continue;
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.pass_every) => {}
            }
            // Stable studies whose event this node missed (restart, other node).
            match self.store.stable_without_case(200).await {
                Ok(uids) => {
                    for u in uids {
                        if let Err(e) = self.on_stable(&u).await {
                            tracing::warn!(error = %e, "case creation failed");
                        }
                    }
                }
                Err(e) if e.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "stable scan failed"),
            }
            match self.route_pass(now_ms()).await {
                Err(DispatchError::Store(e)) if e.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "routing pass failed"),
                Ok(_) => {}
            }
        }
    }

    async fn tail_feed(&self) {
        let mut since = now_ms();
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The events at `since` already seen come back first (`at >= since`, oldest
            // first): ask for that many more, or a pass that stamps more than a page of
            // events with one instant would stall the feed on that instant for good.
            let page = 1000 + seen.len() as i64;
            match self.store.case_events(since, "", page).await {
                Ok(evs) => {
                    for e in evs {
                        if seen.contains(&e.seq_id) {
                            continue;
                        }
                        if e.at > since {
                            since = e.at;
                            seen.clear();
                        }
                        seen.insert(e.seq_id.clone());
                        let _ = self.feed.send(e);
                    }
                }
                // The store was closed: the server is shutting down.
                Err(e) if e.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "case feed failed"),
            }
        }
    }

    /// Writes a case change with its events, then audits each event (a workflow
    /// transition is an access to patient data). `false`: changed meanwhile.
    async fn update_case(
        &self,
        c: &Case,
        order_id: Option<&str>,
        expl: Option<&serde_json::Value>,
        flags: &[String],
        version: i64,
        events: &[CaseEvent],
    ) -> Result<bool, DispatchError> {
        let ok = self
            .store
            .update_case(c, order_id, expl, flags, version, events)
            .await?;
        if ok {
            self.audit(events).await?;
        }
        Ok(ok)
    }

    /// Writes `c` over `sc` (keeping its order, explanation and flags) with `events`.
    async fn rewrite(
        &self,
        sc: &StoredCase,
        c: &Case,
        events: &[CaseEvent],
    ) -> Result<(), DispatchError> {
        if self
            .update_case(
                c,
                sc.order_id.as_deref(),
                None,
                &sc.flags,
                sc.version,
                events,
            )
            .await?
        {
            Ok(())
        } else {
            Err(DispatchError::Conflict)
        }
    }

    async fn insert_case(
        &self,
        c: &Case,
        order_id: Option<&str>,
        expl: Option<&serde_json::Value>,
        events: &[CaseEvent],
    ) -> Result<bool, DispatchError> {
        let ok = self.store.insert_case(c, order_id, expl, events).await?;
        if ok {
            self.audit(events).await?;
        }
        Ok(ok)
    }

    async fn audit(&self, events: &[CaseEvent]) -> Result<(), DispatchError> {
        for e in events {
            self.store
                .audit(meridian_audit::AuditEvent {
                    at_ms: e.at,
                    actor: e.actor.clone(),
                    role: if e.actor == "workflow" || e.actor == "archive" {
                        "system".into()
                    } else {
                        "user".into()
                    },
                    action: format!("workflow {}", e.kind),
                    study_uid: Some(e.study_uid.clone()),
                    source: "meridian".into(),
                    outcome: e.state.clone(),
                    detail: e.detail.chars().take(512).collect(),
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    // ---- orders ----

    /// Takes an order in (new or update). Matches a waiting unmatched study of the
    /// site if it fits. The order's site must have a workflow profile.
    pub async fn order_in(&self, mut o: OrderRow, actor: &str) -> Result<OrderRow, DispatchError> {
        let site = self.store.site_profile(&o.site_id).await?.ok_or_else(|| {
            DispatchError::Invalid(format!("site {:?} has no workflow profile", o.site_id))
        })?;
        if o.patient_id.trim().is_empty() {
            return Err(DispatchError::Invalid("an order needs a patient ID".into()));
        }
        if o.accession.trim().is_empty() && o.placer.trim().is_empty() {
            return Err(DispatchError::Invalid(
                "an order needs an accession number or a placer order number".into(),
            ));
        }
        if o.priority.is_empty() {
            o.priority = "routine".into();
        }
        if o.priority.parse::<Priority>().is_err() {
            return Err(DispatchError::Invalid(format!(
                "unknown priority {:?}",
                o.priority
            )));
        }
        if o.ordered_at == 0 {
            o.ordered_at = now_ms();
        }
        o.created_by = actor.to_owned();
        let (row, created) = self.store.save_order(&o).await?;
        tracing::info!(order = %row.order_id, site = %row.site_id, created, source = %row.source, "order in");
        if row.status == "active" {
            self.match_waiting(&site, &row, actor).await?;
        }
        Ok(row)
    }

    /// Cancels the site's order with this placer number (else accession), and its case
    /// if not yet reported.
    pub async fn cancel_order(
        &self,
        site: &str,
        placer: &str,
        accession: &str,
        actor: &str,
    ) -> Result<bool, DispatchError> {
        let Some(o) = self.store.find_order(site, placer, accession).await? else {
            return Ok(false);
        };
        self.store
            .set_order_status(&o.order_id, "cancelled", None)
            .await?;
        if let Some(uid) = &o.study_uid
            && let Some(sc) = self.store.case(uid).await?
            && let Ok(next) = state::next(sc.case.state, state::Event::Cancel)
        {
            let mut c = sc.case.clone();
            c.state = next;
            c.lock = None;
            let ev = CaseEvent::new(
                &c,
                now_ms(),
                "cancelled",
                actor,
                format!("order {} cancelled", o.order_id),
            );
            self.update_case(
                &c,
                sc.order_id.as_deref(),
                sc.explanation.as_ref(),
                &sc.flags,
                sc.version,
                &[ev],
            )
            .await?;
        }
        Ok(true)
    }

    async fn match_waiting(
        &self,
        site: &Site,
        o: &OrderRow,
        actor: &str,
    ) -> Result<(), DispatchError> {
        let waiting = self
            .store
            .cases_in(&[State::Unmatched], Some(&site.id), 10_000)
            .await?;
        let facts = order_facts(o);
        for sc in waiting {
            let Some(study) = self.store.study_facts(&sc.case.study_uid).await? else {
                continue;
            };
            let m = reconcile::reconcile(
                &study_facts(&study, &site.id),
                std::slice::from_ref(&facts),
                site.contract.match_window_days,
            );
            if matches!(m, Match::Accession { .. } | Match::Patient { .. }) {
                self.attach(site, sc, o, actor, &format!("{m:?}")).await?;
                break;
            }
        }
        Ok(())
    }

    /// Matches an unmatched study to an order by hand (coordinators' queue).
    pub async fn match_study(
        &self,
        study_uid: &str,
        order_id: &str,
        actor: &str,
    ) -> Result<StoredCase, DispatchError> {
        let sc = self
            .store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let o = self
            .store
            .order(order_id)
            .await?
            .ok_or(DispatchError::NotFound)?;
        if o.site_id != sc.case.site {
            return Err(DispatchError::NotFound);
        }
        if o.status != "active" {
            return Err(DispatchError::Invalid(format!("order is {}", o.status)));
        }
        let site = self
            .store
            .site_profile(&sc.case.site)
            .await?
            .ok_or(DispatchError::NotFound)?;
        if sc.case.state == State::Unmatched {
            self.attach(&site, sc, &o, actor, "by hand").await?;
        } else if sc.case.state.is_open() {
            self.link(&site, sc, &o, actor).await?;
        } else {
            return Err(DispatchError::Invalid(format!(
                "study is {}",
                sc.case.state
            )));
        }
        self.store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)
    }

    /// A further order fulfilled by the same study (e.g. chest and abdomen ordered
    /// separately, acquired together): read once; the case takes the more urgent
    /// priority and the earlier deadline of its orders.
    async fn link(
        &self,
        site: &Site,
        sc: StoredCase,
        o: &OrderRow,
        actor: &str,
    ) -> Result<(), DispatchError> {
        let now = now_ms();
        let study = self
            .store
            .study_facts(&sc.case.study_uid)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let mut other = sc.case.clone();
        let mut prio_events = Vec::new();
        apply_order(
            site,
            &mut other,
            Some(o),
            study.received_at,
            &mut prio_events,
            now,
        );
        let mut c = sc.case.clone();
        let mut events = vec![CaseEvent::new(
            &c,
            now,
            "linked",
            actor,
            format!("order {}", o.order_id),
        )];
        if other.priority < c.priority || other.deadline < c.deadline {
            c.priority = c.priority.min(other.priority);
            c.deadline = c.deadline.min(other.deadline);
            if c.protocol.is_none() {
                c.protocol = other.protocol.clone();
            }
            events.push(CaseEvent::new(
                &c,
                now,
                "priority",
                actor,
                format!("{} from linked order {}", c.priority, o.order_id),
            ));
        }
        self.rewrite(&sc, &c, &events).await?;
        self.store
            .set_order_status(&o.order_id, "matched", Some(&c.study_uid))
            .await?;
        self.wake();
        Ok(())
    }

    /// Splits an order off a study (a wrong match): the order waits for a study again;
    /// a study left without an order goes back to the coordinators' queue (only while
    /// no reader has it).
    pub async fn unmatch_study(
        &self,
        study_uid: &str,
        order_id: &str,
        actor: &str,
    ) -> Result<StoredCase, DispatchError> {
        let sc = self
            .store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let orders = self.store.study_orders(study_uid).await?;
        if !orders.iter().any(|o| o.order_id == order_id) {
            return Err(DispatchError::NotFound);
        }
        let rest: Vec<&OrderRow> = orders.iter().filter(|o| o.order_id != order_id).collect();
        let now = now_ms();
        let mut c = sc.case.clone();
        let mut order_ref = sc.order_id.clone();
        let mut events = Vec::new();
        if order_ref.as_deref() == Some(order_id) {
            match rest.first() {
                Some(next) => {
                    order_ref = Some(next.order_id.clone());
                    let site = self
                        .store
                        .site_profile(&c.site)
                        .await?
                        .ok_or(DispatchError::NotFound)?;
                    let study = self
                        .store
                        .study_facts(study_uid)
                        .await?
                        .ok_or(DispatchError::NotFound)?;
                    apply_order(
                        &site,
                        &mut c,
                        Some(next),
                        study.received_at,
                        &mut events,
                        now,
                    );
                }
                None => {
                    c.state = state::next(c.state, state::Event::Unmatch).map_err(|_| {
                        DispatchError::Invalid(format!(
                            "the study is {} and this is its only order: release it first",
                            c.state
                        ))
                    })?;
                    order_ref = None;
                }
            }
        }
        events.insert(
            0,
            CaseEvent::new(&c, now, "unlinked", actor, format!("order {order_id}")),
        );
        if !self
            .update_case(
                &c,
                order_ref.as_deref(),
                sc.explanation.as_ref(),
                &sc.flags,
                sc.version,
                &events,
            )
            .await?
        {
            return Err(DispatchError::Conflict);
        }
        self.store.unlink_order(order_id).await?;
        self.store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)
    }

    /// Unmatched study + order → ready case with triage and deadline.
    async fn attach(
        &self,
        site: &Site,
        sc: StoredCase,
        o: &OrderRow,
        actor: &str,
        how: &str,
    ) -> Result<(), DispatchError> {
        let Ok(next) = state::next(sc.case.state, state::Event::Matched) else {
            return Err(DispatchError::Invalid(format!(
                "study is {}",
                sc.case.state
            )));
        };
        let now = now_ms();
        let study = self
            .store
            .study_facts(&sc.case.study_uid)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let mut c = sc.case.clone();
        let mut events = Vec::new();
        apply_order(site, &mut c, Some(o), study.received_at, &mut events, now);
        c.state = next;
        events.insert(
            0,
            CaseEvent::new(
                &c,
                now,
                "matched",
                actor,
                format!("order {} ({how})", o.order_id),
            ),
        );
        if !self
            .update_case(
                &c,
                Some(&o.order_id),
                sc.explanation.as_ref(),
                &sc.flags,
                sc.version,
                &events,
            )
            .await?
        {
            return Err(DispatchError::Conflict);
        }
        self.store
            .set_order_status(&o.order_id, "matched", Some(&c.study_uid))
            .await?;
        self.wake();
        Ok(())
    }

    // ---- studies ----

    /// A study became stable: reconcile, triage, and open its case. Studies of sites
    /// without a workflow profile stay archive-only.
    pub async fn on_stable(&self, study_uid: &str) -> Result<(), DispatchError> {
        if self.store.case(study_uid).await?.is_some() {
            return Ok(());
        }
        let Some(study) = self.store.study_facts(study_uid).await? else {
            return Ok(());
        };
        let Some(site_id) = study.site_id.clone() else {
            return Ok(());
        };
        let Some(site) = self.store.site_profile(&site_id).await? else {
            return Ok(());
        };
        let now = now_ms();
        let sf = study_facts(&study, &site_id);
        let mut candidates = Vec::new();
        if !study.accession.is_empty()
            && let Some(o) = self
                .store
                .find_order(&site_id, "", &study.accession)
                .await?
        {
            candidates.push(o);
        }
        if !study.patient_id.is_empty() {
            for o in self
                .store
                .patient_orders(&site_id, &study.patient_id, &study.issuer)
                .await?
            {
                if !candidates.iter().any(|c| c.order_id == o.order_id) {
                    candidates.push(o);
                }
            }
        }
        let facts: Vec<OrderFacts> = candidates.iter().map(order_facts).collect();
        let m = reconcile::reconcile(&sf, &facts, site.contract.match_window_days);
        let mut order = match &m {
            Match::Accession { order } | Match::Patient { order } => {
                candidates.iter().find(|o| &o.order_id == order).cloned()
            }
            _ => None,
        };
        let modality = primary_modality(&study.modalities);
        let mut c = Case {
            study_uid: study_uid.to_owned(),
            site: site_id.clone(),
            state: State::Stable,
            priority: Priority::Routine,
            protocol: None,
            subspecialty: None,
            modality: modality.clone(),
            patient_key: format!("{}|{}|{}", site_id, study.issuer, study.patient_id),
            rvu: site.rvu_of(None, &modality),
            base_at: study.received_at,
            deadline: sla::deadline(&site.contract, Priority::Routine, None, study.received_at),
            reading_ms: reading_ms(&modality),
            assigned_to: None,
            assigned_at: None,
            opened_at: None,
            lock: None,
            released_by: Vec::new(),
        };
        let mut events = vec![
            CaseEvent::new(
                &Case {
                    state: State::Received,
                    ..c.clone()
                },
                study.received_at,
                "received",
                "archive",
                String::new(),
            ),
            CaseEvent::new(
                &c,
                study.stable_at.unwrap_or(now),
                "stable",
                "archive",
                String::new(),
            ),
        ];
        if order.is_none()
            && site.contract.unordered == meridian_workflow::model::UnorderedPolicy::Read
        {
            let auto = OrderRow {
                site_id: site_id.clone(),
                accession: study.accession.clone(),
                placer: if study.accession.is_empty() {
                    format!("auto-{study_uid}")
                } else {
                    String::new()
                },
                patient_id: study.patient_id.clone(),
                issuer: study.issuer.clone(),
                modality: modality.clone(),
                procedure_text: study.description.clone(),
                priority: "routine".into(),
                ordered_at: study.received_at,
                status: "active".into(),
                source: "auto".into(),
                created_by: "workflow".into(),
                ..OrderRow::default()
            };
            order = Some(self.store.save_order(&auto).await?.0);
        }
        match &order {
            Some(o) => {
                apply_order(&site, &mut c, Some(o), study.received_at, &mut events, now);
                c.state = State::Ready;
                events.insert(
                    2,
                    CaseEvent::new(
                        &c,
                        now,
                        "matched",
                        "workflow",
                        format!("order {} ({})", o.order_id, match_how(&m)),
                    ),
                );
            }
            None => {
                c.state = State::Unmatched;
                let why = match &m {
                    Match::Ambiguous { orders } => {
                        format!("several orders fit: {}", orders.join(", "))
                    }
                    _ => "no order fits".into(),
                };
                events.push(CaseEvent::new(&c, now, "unmatched", "workflow", why));
            }
        }
        if self
            .insert_case(
                &c,
                order.as_ref().map(|o| o.order_id.as_str()),
                None,
                &events,
            )
            .await?
        {
            if let Some(o) = &order {
                self.store
                    .set_order_status(&o.order_id, "matched", Some(study_uid))
                    .await?;
            }
            tracing::info!(study = %study_uid, site = %site_id, state = %c.state, priority = %c.priority, "case opened");
            self.wake();
        }
        Ok(())
    }

    // ---- routing ----

    async fn world(
        &self,
        now: Millis,
    ) -> Result<(World, HashMap<String, StoredCase>), DispatchError> {
        let sites: BTreeMap<String, Site> = self
            .store
            .site_profiles()
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut readers = Vec::new();
        let mut online = HashSet::new();
        for (r, seen) in self.store.readers().await? {
            if now - seen < self.cfg.online_ms {
                online.insert(r.id.clone());
            }
            readers.push(r);
        }
        let stored = self.store.routing_cases().await?;
        let cases = stored.iter().map(|s| s.case.clone()).collect();
        let by_uid = stored
            .into_iter()
            .map(|s| (s.case.study_uid.clone(), s))
            .collect();
        Ok((
            World {
                sites,
                readers,
                online,
                cases,
            },
            by_uid,
        ))
    }

    /// One routing pass at `now`: escalation, then assignment; persisted case by case.
    pub async fn route_pass(&self, now: Millis) -> Result<PassStats, DispatchError> {
        let _one = self.pass.lock().await;
        let (world, stored) = self.world(now).await?;
        let plan = routing::plan(&world, now);
        let mut stats = PassStats {
            open: world.cases.len(),
            ..PassStats::default()
        };
        // Changes per case, so a release and a reassignment land as one write.
        let mut out: BTreeMap<String, Pending> = BTreeMap::new();
        fn pending<'a>(
            out: &'a mut BTreeMap<String, Pending>,
            stored: &HashMap<String, StoredCase>,
            uid: &str,
        ) -> Option<&'a mut Pending> {
            if !out.contains_key(uid) {
                let s = stored.get(uid)?;
                out.insert(
                    uid.to_owned(),
                    (
                        s.case.clone(),
                        s.explanation.clone(),
                        s.flags.clone(),
                        Vec::new(),
                    ),
                );
            }
            out.get_mut(uid)
        }
        for uid in &plan.expired_locks {
            if let Some(x) = pending(&mut out, &stored, uid) {
                x.0.lock = None;
                x.3.push(CaseEvent::new(
                    &x.0,
                    now,
                    "lock-expired",
                    "workflow",
                    String::new(),
                ));
            }
        }
        for r in &plan.releases {
            if let Some(x) = pending(&mut out, &stored, &r.study_uid) {
                let reader = x.0.assigned_to.take();
                x.0.state = State::Ready;
                x.0.assigned_at = None;
                x.0.lock = None;
                if matches!(
                    r.why,
                    routing::ReleaseWhy::Unopened | routing::ReleaseWhy::AtRisk
                ) {
                    x.0.released_by.push(r.reader.clone());
                }
                let mut ev = CaseEvent::new(&x.0, now, "released", "workflow", json_str(&r.why));
                ev.reader = reader;
                x.3.push(ev);
                stats.released += 1;
            }
        }
        for f in &plan.flags {
            let name = json_str(&f.why);
            if let Some(x) = pending(&mut out, &stored, &f.study_uid)
                && !x.2.contains(&name)
            {
                x.2.push(name.clone());
                x.3.push(CaseEvent::new(&x.0, now, "flag", "workflow", name));
            }
        }
        for a in &plan.assignments {
            if let Some(x) = pending(&mut out, &stored, &a.study_uid) {
                x.0.state = State::Assigned;
                x.0.assigned_to = Some(a.reader.clone());
                x.0.assigned_at = Some(now);
                x.1 = Some(json(&a.explanation));
                x.3.push(CaseEvent::new(
                    &x.0,
                    now,
                    "assigned",
                    "workflow",
                    a.explanation.summary.clone(),
                ));
                stats.assigned += 1;
            }
        }
        for (uid, e) in &plan.unassigned {
            stats.unassigned += 1;
            // Rewritten only when its substance changed (compared by fingerprint: the
            // pass does not load stored explanations).
            let new = json(e);
            let unchanged = stored
                .get(uid)
                .and_then(|s| s.explain_key.as_deref())
                .is_some_and(|k| k == meridian_store::workflow::explain_key(&new));
            if !unchanged && let Some(x) = pending(&mut out, &stored, uid) {
                x.1 = Some(new);
            }
        }
        for (uid, (c, expl, flags, events)) in out {
            let Some(old) = stored.get(&uid) else {
                continue;
            };
            if c == old.case && expl == old.explanation && flags == old.flags && events.is_empty() {
                continue;
            }
            let ok = self
                .store
                .update_case(
                    &c,
                    old.order_id.as_deref(),
                    expl.as_ref(),
                    &flags,
                    old.version,
                    &events,
                )
                .await?;
            if !ok {
                stats.conflicts += 1;
                continue;
            }
            if c.state == State::Assigned
                && let Some(r) = &c.assigned_to
            {
                self.store.grant(r, &uid, "workflow").await?;
            }
        }
        Ok(stats)
    }

    // ---- readers ----

    /// The reader is present (worklist open); returns whether they are a reader.
    pub async fn heartbeat(&self, reader: &str) -> Result<bool, DispatchError> {
        // At most one write per reader per HEARTBEAT_WRITE_MS from this node: presence
        // is good to within a minute, and every worklist request beats.
        let now = now_ms();
        if self
            .beats
            .lock()
            .await
            .get(reader)
            .is_some_and(|t| now - t < HEARTBEAT_WRITE_MS)
        {
            return Ok(true);
        }
        let known = self.store.touch_reader(reader, now).await?;
        if known {
            let mut b = self.beats.lock().await;
            if b.len() > 100_000 {
                b.clear();
            }
            b.insert(reader.to_owned(), now);
        }
        Ok(known)
    }

    /// Claims (pull) or opens (push) a study: the reading lock, state opened, grant.
    pub async fn claim(&self, reader: &str, study_uid: &str) -> Result<StoredCase, DispatchError> {
        let now = now_ms();
        let sc = self
            .store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let me = self
            .store
            .reader(reader)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let site = self
            .store
            .site_profile(&sc.case.site)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let mut cases: Vec<Case> = self
            .store
            .assigned_to(reader)
            .await?
            .into_iter()
            .map(|s| s.case)
            .filter(|c| c.study_uid != study_uid)
            .collect();
        cases.push(sc.case.clone());
        let world = World {
            sites: BTreeMap::from([(site.id.clone(), site)]),
            readers: vec![me],
            online: HashSet::from([reader.to_owned()]),
            cases,
        };
        let (lock, expl) = routing::claim(&world, reader, study_uid, now, self.cfg.lock_ms)?;
        let mut c = sc.case.clone();
        let renew = c.locked_by(now) == Some(reader) && c.opened_at.is_some();
        let event = if c.assigned_to.as_deref() == Some(reader) {
            state::Event::Open
        } else {
            state::Event::Claim
        };
        c.state = state::next(c.state, event).map_err(|e| DispatchError::Invalid(e.to_string()))?;
        c.assigned_to = Some(reader.to_owned());
        c.assigned_at.get_or_insert(now);
        c.opened_at.get_or_insert(now);
        c.lock = Some(lock);
        let kind = if renew {
            "lock-renewed"
        } else if event == state::Event::Claim {
            "claimed"
        } else {
            "opened"
        };
        let expl_json = if event == state::Event::Claim {
            Some(json(&expl))
        } else {
            sc.explanation.clone()
        };
        let ev = CaseEvent::new(&c, now, kind, reader, expl.summary.clone());
        if !self
            .update_case(
                &c,
                sc.order_id.as_deref(),
                expl_json.as_ref(),
                &sc.flags,
                sc.version,
                &[ev],
            )
            .await?
        {
            return Err(DispatchError::Conflict);
        }
        self.store.grant(reader, study_uid, "workflow").await?;
        self.store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)
    }

    /// The holder gives a study back (it returns to the queue, not to them).
    pub async fn release(
        &self,
        reader: &str,
        study_uid: &str,
    ) -> Result<StoredCase, DispatchError> {
        let now = now_ms();
        let sc = self
            .store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)?;
        if sc.case.assigned_to.as_deref() != Some(reader) {
            return Err(DispatchError::NotFound);
        }
        let mut c = sc.case.clone();
        c.state = state::next(c.state, state::Event::Release)
            .map_err(|e| DispatchError::Invalid(e.to_string()))?;
        c.assigned_to = None;
        c.assigned_at = None;
        c.opened_at = None;
        c.lock = None;
        c.released_by.push(reader.to_owned());
        let mut ev = CaseEvent::new(&c, now, "released", reader, "by the reader".into());
        ev.reader = Some(reader.to_owned());
        self.rewrite(&sc, &c, &[ev]).await?;
        self.wake();
        self.store
            .case(study_uid)
            .await?
            .ok_or(DispatchError::NotFound)
    }

    /// Site profiles, re-read at most every [`PROFILE_TTL_MS`] (worklists are frequent;
    /// profile changes take effect within that).
    pub async fn sites_cached(&self) -> Result<Arc<Vec<Site>>, DispatchError> {
        let now = now_ms();
        let mut c = self.sites_cache.lock().await;
        if let Some((at, s)) = c.as_ref()
            && now - at < PROFILE_TTL_MS
        {
            return Ok(s.clone());
        }
        let s = Arc::new(self.store.site_profiles().await?);
        *c = Some((now, s.clone()));
        Ok(s)
    }

    /// A reader's profile, re-read at most every [`PROFILE_TTL_MS`].
    async fn reader_cached(&self, id: &str) -> Result<Reader, DispatchError> {
        let now = now_ms();
        if let Some((at, r)) = self.readers_cache.lock().await.get(id)
            && now - at < PROFILE_TTL_MS
        {
            return Ok(r.clone());
        }
        let r = self
            .store
            .reader(id)
            .await?
            .ok_or(DispatchError::NotFound)?;
        let mut c = self.readers_cache.lock().await;
        if c.len() > 100_000 {
            c.clear();
        }
        c.insert(id.to_owned(), (now, r.clone()));
        Ok(r)
    }

    /// Sites whose studies this reader could read (licence, credential, residency):
    /// the claimable list comes from these sites' queues.
    pub fn reader_sites<'a>(reader: &Reader, sites: &'a [Site], now: Millis) -> Vec<&'a Site> {
        let day = eligibility::today(now);
        sites
            .iter()
            .filter(|s| eligibility::may_read_at(reader, s, day))
            .collect()
    }

    /// A reader's worklist: their assigned studies and the studies they may claim, each
    /// earliest deadline first.
    pub async fn worklist(
        &self,
        reader: &str,
        f: &Filter,
        limit: usize,
    ) -> Result<Worklist, DispatchError> {
        let now = now_ms();
        let me = self.reader_cached(reader).await?;
        let mine = self.store.assigned_to(reader).await?;
        let sites = self.sites_cached().await?;
        let mut claimable = Vec::new();
        let load = mine.len() as u32;
        let presence = eligibility::Presence {
            online: true,
            on_shift: meridian_workflow::shift::on_shift(&me, now),
            load,
            load_rvu: mine.iter().map(|c| c.case.rvu).sum(),
        };
        let day = eligibility::today(now);
        // Off shift or at the cap: nothing is claimable, whatever the queues hold.
        let can_claim = presence.on_shift && presence.load < me.max_concurrent;
        for s in Self::reader_sites(&me, &sites, now)
            .into_iter()
            .filter(|_| can_claim)
        {
            if s.contract.mode != Mode::Pull
                || !routing::covered(s, now)
                || f.site.as_ref().is_some_and(|x| *x != s.id)
            {
                continue;
            }
            let modalities: Vec<String> = me
                .modalities
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            for c in self
                .store
                .ready_at(&s.id, &modalities, limit as i64 + 20)
                .await?
            {
                if eligibility::check(&me, &presence, s, &c.case, day, true).is_empty()
                    && f.keeps(&c.case)
                {
                    claimable.push(c);
                }
            }
        }
        claimable.sort_by(|a, b| routing::edf_key(&a.case).cmp(&routing::edf_key(&b.case)));
        claimable.truncate(limit);
        let assigned: Vec<Item> = mine
            .into_iter()
            .filter(|c| f.keeps(&c.case))
            .map(|c| item(c, now))
            .collect();
        let claimable: Vec<Item> = claimable.into_iter().map(|c| item(c, now)).collect();
        let mut counts = Counts {
            assigned: assigned.len(),
            claimable: claimable.len(),
            ..Counts::default()
        };
        for i in assigned.iter().chain(&claimable) {
            match i.case.case.priority {
                Priority::Stat => counts.stat += 1,
                Priority::Urgent => counts.urgent += 1,
                Priority::Routine => counts.routine += 1,
            }
        }
        Ok(Worklist {
            reader: reader.to_owned(),
            assigned,
            claimable,
            counts,
        })
    }

    /// Every open study with its SLA state and explanation (operations).
    pub async fn operations(&self, f: &Filter, limit: i64) -> Result<Vec<Item>, DispatchError> {
        let now = now_ms();
        let cases = self
            .store
            .cases_in(
                &[
                    State::Unmatched,
                    State::Ready,
                    State::Assigned,
                    State::Opened,
                    State::Preliminary,
                ],
                f.site.as_deref(),
                limit,
            )
            .await?;
        Ok(cases
            .into_iter()
            .filter(|c| f.keeps(&c.case))
            .map(|c| item(c, now))
            .collect())
    }
}

/// A case being changed by a pass: case, explanation, flags, events.
type Pending = (Case, Option<serde_json::Value>, Vec<String>, Vec<CaseEvent>);

fn json_str<T: Serialize>(v: &T) -> String {
    match json(v) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn match_how(m: &Match) -> &'static str {
    match m {
        Match::Accession { .. } => "by accession",
        Match::Patient { .. } => "by patient and date",
        _ => "automatic order",
    }
}

fn primary_modality(mods: &[String]) -> String {
    mods.iter()
        .find(|m| !NON_IMAGE.contains(&m.as_str()))
        .or(mods.first())
        .cloned()
        .unwrap_or_else(|| "OT".into())
}

fn order_facts(o: &OrderRow) -> OrderFacts {
    OrderFacts {
        id: o.order_id.clone(),
        site: o.site_id.clone(),
        accession: o.accession.clone(),
        patient_id: o.patient_id.clone(),
        issuer: o.issuer.clone(),
        modality: o.modality.clone(),
        ordered_at: o.ordered_at,
        closed: o.status != "active",
    }
}

fn study_facts(s: &meridian_store::workflow::StudyFacts, site: &str) -> reconcile::StudyFacts {
    let at = parse_hl7_ts(&s.study_date, "UTC").unwrap_or(s.received_at);
    reconcile::StudyFacts {
        site: site.to_owned(),
        accession: s.accession.clone(),
        patient_id: s.patient_id.clone(),
        issuer: s.issuer.clone(),
        modalities: s.modalities.clone(),
        at,
    }
}

/// Sets priority (triage), protocol, subspecialty, RVU and deadline of a case from its
/// order, recording each priority change as an event.
fn apply_order(
    site: &Site,
    c: &mut Case,
    o: Option<&OrderRow>,
    received_at: Millis,
    events: &mut Vec<CaseEvent>,
    now: Millis,
) {
    let ordered = o.and_then(|o| o.priority.parse::<Priority>().ok());
    let facts = o.map(|o| triage::Facts {
        patient_class: o.patient_class.clone(),
        location: o.location.clone(),
        reason: format!("{} {}", o.reason, o.history),
        modality: if o.modality.is_empty() {
            c.modality.clone()
        } else {
            o.modality.clone()
        },
        body_part: o.body_part.clone(),
        procedure: o.procedure_text.clone(),
    });
    let facts = facts.unwrap_or_default();
    let t = triage::triage(ordered, &facts, &site.triage);
    c.priority = t.priority;
    c.protocol = t.protocol.clone();
    c.subspecialty = t.subspecialty.clone();
    if let Some(o) = o {
        if !o.modality.is_empty() {
            c.modality = o.modality.to_ascii_uppercase();
            c.reading_ms = reading_ms(&c.modality);
        }
        let pc = (!o.procedure_code.is_empty()).then_some(o.procedure_code.as_str());
        c.rvu = site.rvu_of(pc, &c.modality);
    }
    // The SLA clock starts at the order if the order was placed within one SLA
    // period before the images arrived (an emergency ordered, then scanned); a
    // scheduled order placed long before starts at arrival.
    let by_arrival = sla::deadline(
        &site.contract,
        c.priority,
        c.protocol.as_deref(),
        received_at,
    );
    let sla_len = by_arrival - received_at;
    c.base_at = match o {
        Some(o)
            if o.ordered_at > 0
                && o.ordered_at <= received_at
                && received_at - o.ordered_at < sla_len =>
        {
            o.ordered_at
        }
        _ => received_at,
    };
    c.deadline = sla::deadline(&site.contract, c.priority, c.protocol.as_deref(), c.base_at);
    for ch in &t.changes {
        let mut detail = format!("{} from {}", ch.to, ch.source);
        if let Some(p) = &ch.protocol {
            detail.push_str(&format!(", protocol {p}"));
        }
        events.push(CaseEvent::new(
            c,
            now,
            "priority",
            &ch.source.to_string(),
            detail,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_hl7_ts;

    #[test]
    fn hl7_timestamps() {
        // 2026-11-24 09:30 in Chicago (UTC-6) = 15:30Z.
        let chicago = parse_hl7_ts("202611240930", "America/Chicago").unwrap();
        assert_eq!(chicago, parse_hl7_ts("20261124153000+0000", "UTC").unwrap());
        assert_eq!(
            chicago,
            parse_hl7_ts("20261124093000-0600", "Asia/Tokyo").unwrap()
        );
        assert!(parse_hl7_ts("20261124", "UTC").is_some());
        for bad in [
            "",
            "2026",
            "2026112X",
            "20261340",
            "20261124+1\u{e9}2",
            "20261124\u{e9}\u{e9}",
        ] {
            assert_eq!(parse_hl7_ts(bad, "UTC"), None, "{bad:?}");
        }
        // A malformed offset is refused, never sliced through (a non-ASCII one used to panic).
        assert_eq!(parse_hl7_ts("20261124093000+1\u{e9}2", "UTC"), None);
        assert_eq!(parse_hl7_ts("20261124093000+12", "UTC"), None);
    }
}
