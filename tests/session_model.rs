//! Model-based randomized test of the session layer (issue 7): several in-process
//! service instances over 3 real memcached processes run random operations (create, set
//! or remove an attribute, read-only request, invalidate, takeover, overlapping requests
//! of one session in scripted interleavings, requests with old and forged ids, kill /
//! restart-empty / SIGSTOP of one node at a time with a heal step before the next fault,
//! async flush, instance restart, id rotation (`cycle_id`), binding to a principal and
//! log-out-everywhere (`invalidate_principal`)), and every outcome is checked against a reference
//! model of the consistency guarantee (docs/session.md, invariants I1-I3):
//!
//! * a read returns, per attribute, the value of the last acknowledged write or of a
//!   write that overlapped it in time - never an older acknowledged value, never a
//!   refused one (`Conflict`, or any error outside a fault), never a value from before
//!   an invalidation;
//! * an invalidated session is never seen again, with any id, on any instance;
//! * a live session is never lost (no `None`, no cookie removal) and a failed load never
//!   removes the cookie.
//!
//! One test per mode family, each with its own cluster: sticky (two sync instances and
//! one async), non-sticky with locking `none`, `all`, `auto`; and sticky on the peer
//! backend (no memcached: the instances back each other up), where a fault is an
//! instance (a sync one) dropped and restarted empty, memory and endpoint both lost.
//!
//! Environment:
//! * `MEMKEEP_TEST_SEED=<u64>`: the seed (printed at the start and on failure); the same
//!   seed replays the same operations (timing still varies with real processes).
//! * `MEMKEEP_MODEL_OPS=<n>`: operations per family (default 150).
//! * `MEMKEEP_MODEL_SECS=<s>`: wall-clock cap per family (default 14 s, so the four
//!   families take about 60 s in CI); raise both for a longer run.
//! * `MEMKEEP_MODEL_KEEP_GOING=1`: record every mismatch and go on (the test still fails,
//!   at the end, listing them all) instead of stopping at the first.
//! * `MEMKEEP_MODEL_ONLY=create,write,read,...`: run only these kinds of operations
//!   (`create`, `write`, `read`, `logout`, `overlap`, `forged`, `fault`, `flush`,
//!   `restart`, `rotate`, `principal`; others become reads): a debugging aid to isolate
//!   a failure.
//!
//! A rotation is modelled as the old key's session invalidated (no id of it may serve
//! again) and a new session under the new key with the same attribute candidates; a
//! log-out-everywhere as the invalidation of every session bound to the principal.

mod kit;
#[path = "kit/peers.rs"]
mod peers_kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kit::{Cluster, Rng};
use memkeep::session::{
    BackupSessionService, CookieDecision, Mode, RequestInfo, SaveOutcome, Session, SessionError,
    SessionId, SessionKey, WriteMode,
};
use peers_kit::Peers;
use session_kit::{config, id_variants, service, wait_nodes_up};

/// Where the sessions are kept.
enum Backend {
    /// 3 memcached processes.
    Memcached(Cluster),
    /// The instances themselves (peer backend).
    Peers(Peers),
}

impl Backend {
    /// The node ids a session id may name.
    fn ids(&self) -> Vec<String> {
        match self {
            Backend::Memcached(c) => c.ids(),
            Backend::Peers(p) => p.routes(),
        }
    }
}

/// The attributes the model tracks.
const ATTRS: [&str; 3] = ["a0", "a1", "a2"];
/// Most sessions alive at once.
const MAX_LIVE: usize = 8;
/// The principals sessions are bound to.
const PRINCIPALS: [&str; 2] = ["ann", "bob"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    StickySync,
    StickyAsync,
    NonSticky,
}

struct Inst {
    name: String,
    kind: Kind,
    locking: &'static str,
    svc: BackupSessionService,
}

fn build(backend: &Backend, name: &str, kind: Kind, locking: &str) -> BackupSessionService {
    let cluster = match backend {
        Backend::Memcached(c) => c,
        Backend::Peers(p) => {
            return p.start_with(name, |b| match kind {
                Kind::StickyAsync => b.write_mode(WriteMode::Async),
                _ => b,
            })
        }
    };
    let b = match kind {
        Kind::StickySync => config(cluster, Mode::Sticky).route(name),
        Kind::StickyAsync => config(cluster, Mode::Sticky)
            .route(name)
            .write_mode(WriteMode::Async),
        Kind::NonSticky => config(cluster, Mode::NonSticky)
            .locking_str(locking)
            .lock_wait(Duration::from_secs(2)),
    };
    service(cluster, b)
}

/// One candidate value of an attribute: a write that was acknowledged, or is (or may
/// still be) in flight.
#[derive(Clone, Debug)]
struct Cand {
    wid: u64,
    value: Option<u64>,
    /// Model time the write completed; `None`: in flight.
    done: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Live,
    Invalidated,
    /// An outcome the model cannot decide (an invalidation that failed under a fault):
    /// no longer checked.
    Retired,
}

struct Sess {
    key: SessionKey,
    cookie: Option<String>,
    ids: Vec<String>,
    life: Life,
    attrs: BTreeMap<&'static str, Vec<Cand>>,
    requested_since_fault: bool,
    /// The principal the session is bound to; `false`: the bind's outcome is unknown
    /// (its request failed under a fault).
    principal: Option<(&'static str, bool)>,
    /// Logged out everywhere and not requested since. docs/session.md ("Limitations"):
    /// such a session stays dead through one node fault, and the first request after
    /// the log-out tombstones it for good; so the heal step requests it, as it requests
    /// every live session, before the next fault.
    unrequested_principal_logout: bool,
}

type Obs = BTreeMap<&'static str, Option<u64>>;

#[derive(Debug)]
enum Load {
    Failed(String),
    Absent,
    Found(SessionKey, Obs),
    Garbled(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Nothing,
    Set(&'static str, Option<u64>),
    Invalidate,
}

fn observe(s: &Session) -> Load {
    let mut obs = Obs::new();
    for a in ATTRS {
        match s.get::<u64>(a) {
            Ok(v) => {
                obs.insert(a, v);
            }
            Err(e) => return Load::Garbled(format!("attribute {a}: {e}")),
        }
    }
    Load::Found(s.id().key(), obs)
}

fn apply(s: &Session, act: Act) {
    match act {
        Act::Nothing => {}
        Act::Set(a, Some(v)) => s.insert(a, &v).unwrap(),
        Act::Set(a, None) => {
            s.remove(a);
        }
        Act::Invalidate => s.invalidate(),
    }
}

async fn load(req: &memkeep::session::SessionRequest, create: bool) -> (Load, Option<Session>) {
    let r = if create {
        req.get_or_create().await.map(Some)
    } else {
        req.session().await
    };
    match r {
        Err(e) => (Load::Failed(e.to_string()), None),
        Ok(None) => (Load::Absent, None),
        Ok(Some(s)) => (observe(&s), Some(s)),
    }
}

/// One whole request: load (or create), act, finish.
async fn request(
    svc: &BackupSessionService,
    path: &str,
    id: Option<&str>,
    act: Act,
    create: bool,
) -> (Load, Result<SaveOutcome, SessionError>) {
    let req = svc.request(RequestInfo::new(path).session_id(id));
    let (l, s) = load(&req, create).await;
    if let Some(s) = &s {
        apply(s, act);
    }
    drop(s);
    (l, req.finish().await)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Killed(usize),
    Paused(usize),
    Restarted(usize),
}

#[derive(Default, Debug)]
struct Counters {
    requests: u64,
    acked_writes: u64,
    refused: u64,
    load_failures: u64,
    finish_errors: u64,
    invalidations: u64,
    faults: u64,
    probes: u64,
    rotations: u64,
    logout_rotation_races: u64,
    binds: u64,
    principal_logouts: u64,
}

struct World {
    family: &'static str,
    seed: u64,
    rng: Rng,
    cluster: Backend,
    insts: Vec<Inst>,
    routes: Vec<String>,
    sessions: Vec<Sess>,
    now: u64,
    next_id: u64,
    history: Vec<String>,
    /// When the run started (history lines carry the wall-clock time since, in ms:
    /// background work such as hint delivery runs on its own schedule).
    started: Instant,
    fault: Option<Fault>,
    ops_since_fault: u32,
    uncertain: Vec<(usize, &'static str, u64)>,
    async_pending: Vec<Vec<(usize, &'static str, u64)>>,
    locked: bool,
    keep_going: bool,
    shared_overlap: bool,
    only: Option<Vec<String>>,
    violations: Vec<String>,
    c: Counters,
}

impl World {
    fn tick(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn log(&mut self, line: String) {
        let t = self.now;
        let ms = self.started.elapsed().as_millis();
        self.history.push(format!("t{t} +{ms}ms {line}"));
    }

    /// A mismatch between the service and the model: the test fails at once with the
    /// seed, the history tail and the mismatch (with `MEMKEEP_MODEL_KEEP_GOING=1`, it is
    /// recorded and the run goes on; the test fails at the end with every mismatch).
    fn violation(&mut self, msg: String) {
        self.log(format!("VIOLATION: {msg}"));
        if self.keep_going {
            let tail: Vec<String> = self.history.iter().rev().take(12).rev().cloned().collect();
            self.violations.push(format!(
                "{msg}\n    context:\n      {}",
                tail.join("\n      ")
            ));
            return;
        }
        let tail: Vec<&String> = self
            .history
            .iter()
            .rev()
            .take(history_tail())
            .rev()
            .collect();
        panic!(
            "MODEL VIOLATION in family {} (seed {}; replay with MEMKEEP_TEST_SEED={}):\n{msg}\n\
             last operations:\n{}\ncounters: {:?}",
            self.family,
            self.seed,
            self.seed,
            tail.iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.c
        );
    }

    /// A failure of the test harness itself (not of the session layer).
    fn harness(&self, msg: String) -> ! {
        panic!(
            "model harness, family {} (seed {}): {msg}",
            self.family, self.seed
        );
    }

    /// Whether operations of `kind` run (`MEMKEEP_MODEL_ONLY`).
    fn may(&self, kind: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|k| k == kind))
    }

    fn sticky(&self) -> bool {
        self.insts[0].kind != Kind::NonSticky
    }

    fn has_async(&self) -> bool {
        self.insts.iter().any(|i| i.kind == Kind::StickyAsync)
    }

    // ---- the reference model -----------------------------------------------------

    fn begin_write(&mut self, si: usize, attr: &'static str, value: Option<u64>) -> u64 {
        let wid = self.fresh();
        self.sessions[si].attrs.get_mut(attr).unwrap().push(Cand {
            wid,
            value,
            done: None,
        });
        wid
    }

    /// An acknowledged write that started at `start`: values completed before it
    /// started are superseded.
    fn ack(&mut self, si: usize, attr: &'static str, wid: u64, start: u64) {
        let now = self.now;
        let cands = self.sessions[si].attrs.get_mut(attr).unwrap();
        for c in cands.iter_mut() {
            if c.wid == wid {
                c.done = Some(now);
            }
        }
        cands.retain(|c| c.wid == wid || c.done.is_none_or(|d| d >= start));
        self.c.acked_writes += 1;
    }

    fn refuse(&mut self, si: usize, attr: &'static str, wid: u64) {
        self.sessions[si]
            .attrs
            .get_mut(attr)
            .unwrap()
            .retain(|c| c.wid != wid);
    }

    /// Marks writes done (landed or not) without superseding anything.
    fn settle_writes(&mut self, writes: Vec<(usize, &'static str, u64)>) {
        let now = self.now;
        for (si, attr, wid) in writes {
            for c in self.sessions[si].attrs.get_mut(attr).unwrap() {
                if c.wid == wid {
                    c.done = Some(now);
                }
            }
        }
    }

    fn allowed(&self, si: usize, attr: &str) -> Vec<Option<u64>> {
        self.sessions[si].attrs[attr]
            .iter()
            .map(|c| c.value)
            .collect()
    }

    /// Checks what a request loaded. `must_exist`: a live session must be found;
    /// `extra`: values also allowed (a snapshot taken when the request started).
    fn check_load(
        &mut self,
        si: usize,
        what: &str,
        l: &Load,
        must_exist: bool,
        extra: Option<&BTreeMap<&'static str, Vec<Option<u64>>>>,
    ) {
        let life = self.sessions[si].life;
        match l {
            Load::Garbled(e) => self.violation(format!("{what}: session s{si} unreadable: {e}")),
            Load::Failed(_) => self.c.load_failures += 1,
            Load::Absent => {
                if life == Life::Live && must_exist {
                    self.violation(format!("{what}: live session s{si} not found (lost)"));
                }
            }
            Load::Found(key, obs) => {
                if *key != self.sessions[si].key {
                    self.violation(format!("{what}: s{si} returned another session's key"));
                }
                match life {
                    Life::Invalidated => self.violation(format!(
                        "{what}: INVALIDATED session s{si} seen again with {obs:?}"
                    )),
                    Life::Retired => {}
                    Life::Live => {
                        for (attr, v) in obs {
                            let mut ok = self.allowed(si, attr);
                            if let Some(x) = extra.and_then(|e| e.get(attr)) {
                                ok.extend(x.iter().copied());
                            }
                            if !ok.contains(v) {
                                self.violation(format!(
                                    "{what}: s{si}.{attr} = {v:?}, allowed {ok:?} (an older \
                                     acknowledged, a refused or a lost value)"
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The browser's side of a finished request of a live session.
    fn check_cookie(&mut self, si: usize, what: &str, l: &Load, out: &SaveOutcome, apply: bool) {
        if let Load::Failed(e) = l {
            if out.cookie == CookieDecision::Remove {
                self.violation(format!(
                    "{what}: a failed load ({e}) told the client to forget session s{si}"
                ));
            }
            return;
        }
        if !apply || self.sessions[si].life != Life::Live {
            return;
        }
        match &out.cookie {
            CookieDecision::Keep => {}
            CookieDecision::Remove => self.violation(format!(
                "{what}: the cookie of live session s{si} was removed (session lost)"
            )),
            CookieDecision::Set(id) => {
                let key = SessionId::parse(id).map(|i| i.key());
                if key != Some(self.sessions[si].key) {
                    self.violation(format!("{what}: s{si} was given the id of another session"));
                }
                self.sessions[si].cookie = Some(id.clone());
                self.sessions[si].ids.push(id.clone());
            }
        }
    }

    /// Records what became of a write after its request finished.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        si: usize,
        inst: usize,
        what: &str,
        l: &Load,
        fin: &Result<SaveOutcome, SessionError>,
        write: Option<(&'static str, u64, u64)>,
    ) {
        let loaded = matches!(l, Load::Found(..));
        match fin {
            Ok(out) => {
                if let Some((attr, wid, start)) = write {
                    let unchanged = matches!(l, Load::Found(_, obs) if obs.get(attr) == Some(&self.sessions[si].attrs[attr].iter().find(|c| c.wid == wid).and_then(|c| c.value)));
                    if !loaded {
                        self.refuse(si, attr, wid);
                    } else if (unchanged || self.shared_overlap) && !out.written {
                        // No change to write, or (one instance, overlapping requests
                        // sharing the session object) the other request already wrote
                        // this change.
                        // (Setting the value it already had, or removing an absent
                        // attribute, is no change.)
                        self.ack(si, attr, wid, start);
                    } else if !out.written {
                        if self.sessions[si].life == Life::Live {
                            self.violation(format!(
                                "{what}: a change of live session s{si} was answered Ok but \
                                 not written: {out:?}"
                            ));
                        }
                        self.refuse(si, attr, wid);
                    } else if self.insts[inst].kind == Kind::StickyAsync {
                        self.async_pending[inst].push((si, attr, wid));
                    } else {
                        self.ack(si, attr, wid, start);
                    }
                }
            }
            Err(e) => {
                self.c.finish_errors += 1;
                if let Some((attr, wid, _)) = write {
                    if matches!(e, SessionError::Conflict) || self.fault.is_none() {
                        self.c.refused += 1;
                        self.refuse(si, attr, wid);
                    } else {
                        self.uncertain.push((si, attr, wid));
                    }
                }
            }
        }
    }

    // ---- choices ----------------------------------------------------------------

    fn live(&self) -> Vec<usize> {
        (0..self.sessions.len())
            .filter(|&i| self.sessions[i].life == Life::Live)
            .collect()
    }

    fn invalidated(&self) -> Vec<usize> {
        (0..self.sessions.len())
            .filter(|&i| self.sessions[i].life == Life::Invalidated)
            .collect()
    }

    fn pick(&mut self, v: &[usize]) -> usize {
        v[self.rng.below(v.len() as u64) as usize]
    }

    /// The instance a browser's request goes to: sticky, usually the owner named in
    /// the cookie's route (else a takeover).
    fn inst_for(&mut self, si: usize) -> usize {
        let n = self.insts.len() as u64;
        if self.sticky() && self.rng.chance(75) {
            let route = self.sessions[si]
                .cookie
                .as_deref()
                .and_then(SessionId::parse)
                .and_then(|id| id.route().map(str::to_owned));
            if let Some(i) = self
                .insts
                .iter()
                .position(|x| Some(&x.name) == route.as_ref())
            {
                return i;
            }
        }
        self.rng.below(n) as usize
    }

    fn forged_id(&mut self, si: usize) -> String {
        let ids = self.sessions[si].ids.clone();
        if !ids.is_empty() && self.rng.chance(40) {
            return ids[self.rng.below(ids.len() as u64) as usize].clone();
        }
        let routes: Vec<&str> = self.routes.iter().map(String::as_str).collect();
        let all = id_variants(self.sessions[si].key, &self.cluster.ids(), &routes);
        all[self.rng.below(all.len() as u64) as usize].clone()
    }

    fn write_path(&mut self) -> &'static str {
        if self.insts[0].locking == "auto" && self.rng.chance(25) {
            "/read" // a path known read-only that changes the session after all
        } else {
            "/set"
        }
    }

    fn random_set(&mut self) -> Act {
        let attr = ATTRS[self.rng.below(ATTRS.len() as u64) as usize];
        let v = if self.rng.chance(15) {
            None
        } else {
            Some(self.fresh())
        };
        Act::Set(attr, v)
    }

    // ---- operations -------------------------------------------------------------

    async fn op_create(&mut self, inst: usize, presented: Option<String>, old: Option<usize>) {
        let v = self.fresh();
        let svc = self.insts[inst].svc.clone();
        self.tick();
        let (l, fin) = request(
            &svc,
            "/login",
            presented.as_deref(),
            Act::Set("a0", Some(v)),
            true,
        )
        .await;
        self.tick();
        self.c.requests += 1;
        let what = format!("create via {}", self.insts[inst].name);
        self.log(format!(
            "{what} (presenting {presented:?}) -> {l:?} / {fin:?}"
        ));
        let key = match &l {
            Load::Found(key, obs) => {
                if obs.values().any(Option::is_some) && obs.get("a0") != Some(&Some(v)) {
                    self.violation(format!("{what}: a new session has attributes: {obs:?}"));
                }
                *key
            }
            Load::Failed(_) => {
                self.c.load_failures += 1;
                return;
            }
            other => {
                self.violation(format!("{what}: get_or_create gave {other:?}"));
                return;
            }
        };
        if let Some(old) = old {
            if key == self.sessions[old].key {
                self.violation(format!(
                    "{what}: get_or_create with invalidated s{old}'s id returned s{old} again"
                ));
                return;
            }
        }
        let Ok(out) = fin else {
            self.c.finish_errors += 1;
            return;
        };
        let CookieDecision::Set(id) = out.cookie.clone() else {
            self.violation(format!("{what}: a new session without a cookie: {out:?}"));
            return;
        };
        let now = self.now;
        let mut attrs = BTreeMap::new();
        for a in ATTRS {
            let value = (a == "a0").then_some(v);
            let wid = self.fresh();
            attrs.insert(
                a,
                vec![Cand {
                    wid,
                    value,
                    done: Some(now),
                }],
            );
        }
        self.sessions.push(Sess {
            key,
            cookie: Some(id.clone()),
            ids: vec![id],
            life: Life::Live,
            attrs,
            requested_since_fault: true,
            principal: None,
            unrequested_principal_logout: false,
        });
        let si = self.sessions.len() - 1;
        self.log(format!("  -> s{si}"));
        if self.insts[inst].kind == Kind::StickyAsync {
            // Until it is flushed a new async session exists only in its owner's memory.
            self.op_flush(inst).await;
        }
    }

    /// One request of the browser of live session `si`.
    async fn op_request(&mut self, si: usize, inst: usize, path: &str, act: Act) {
        let svc = self.insts[inst].svc.clone();
        let cookie = self.sessions[si].cookie.clone();
        let start = self.tick();
        let write = match act {
            Act::Set(attr, v) => Some((attr, self.begin_write(si, attr, v), start)),
            _ => None,
        };
        let (l, fin) = request(&svc, path, cookie.as_deref(), act, false).await;
        self.tick();
        self.c.requests += 1;
        let what = format!("{act:?} {path} s{si} via {}", self.insts[inst].name);
        self.log(format!("{what} -> {l:?} / {fin:?}"));
        self.check_load(si, &what, &l, true, None);
        if let Ok(out) = &fin {
            if act != Act::Invalidate || !matches!(l, Load::Found(..)) {
                self.check_cookie(si, &what, &l, out, true);
            }
        }
        if matches!(l, Load::Found(..)) {
            self.sessions[si].requested_since_fault = true;
        }
        if act == Act::Invalidate && matches!(l, Load::Found(..)) {
            match &fin {
                Ok(out) if out.cookie == CookieDecision::Remove => {
                    self.sessions[si].life = Life::Invalidated;
                    self.sessions[si].cookie = None;
                    self.c.invalidations += 1;
                }
                Ok(out) => {
                    self.violation(format!("{what}: logout did not remove the cookie: {out:?}"))
                }
                Err(_) => self.sessions[si].life = Life::Retired,
            }
            return;
        }
        self.settle(si, inst, &what, &l, &fin, write);
    }

    /// A request presenting an old or forged id of session `si` (not the browser's).
    async fn op_forged(&mut self, si: usize, inst: usize) {
        let id = self.forged_id(si);
        let svc = self.insts[inst].svc.clone();
        self.tick();
        let (l, fin) = request(&svc, "/read", Some(&id), Act::Nothing, false).await;
        self.tick();
        self.c.requests += 1;
        self.c.probes += 1;
        let what = format!(
            "forged/old id {id} ({:?} s{si}) via {}",
            self.sessions[si].life, self.insts[inst].name
        );
        self.log(format!("{what} -> {l:?} / {fin:?}"));
        self.check_load(si, &what, &l, false, None);
        if let Ok(out) = &fin {
            self.check_cookie(si, &what, &l, out, false);
        }
    }

    /// Two overlapping requests of one session: A loads, B loads, then A finishes and
    /// B finishes, or (`b_first`) B finishes before A. A locked B cannot load before A
    /// released the lock: it then loads after A finished.
    async fn op_overlap(&mut self, si: usize) {
        let n = self.insts.len() as u64;
        let ia = self.inst_for(si);
        let same = self.rng.chance(20);
        let ib = if same {
            ia
        } else {
            (ia + 1 + self.rng.below(n - 1) as usize) % n as usize
        };
        let logout = self.may("logout");
        let (act_a, act_b) = loop {
            let a = match self.rng.below(5) {
                0 => Act::Nothing,
                1 if logout => Act::Invalidate,
                _ => self.random_set(),
            };
            let b = match self.rng.below(5) {
                0 => Act::Nothing,
                1 if logout => Act::Invalidate,
                _ => self.random_set(),
            };
            let both_inv = a == Act::Invalidate && b == Act::Invalidate;
            let same_bad = same
                && (a == Act::Invalidate
                    || b == Act::Invalidate
                    || matches!((a, b), (Act::Set(x, _), Act::Set(y, _)) if x == y));
            if !both_inv && !same_bad {
                break (a, b);
            }
        };
        let b_first = self.rng.chance(50);
        let path_a = if matches!(act_a, Act::Set(..)) {
            self.write_path()
        } else {
            "/read"
        };
        let path_b = if matches!(act_b, Act::Set(..)) {
            self.write_path()
        } else {
            "/read"
        };
        let cookie = self.sessions[si].cookie.clone();
        let what_a = format!(
            "overlap A {act_a:?} {path_a} s{si} via {}",
            self.insts[ia].name
        );
        let what_b = format!(
            "overlap B {act_b:?} {path_b} s{si} via {}{}",
            self.insts[ib].name,
            if b_first { " (B finishes first)" } else { "" }
        );

        let start_a = self.tick();
        let write_a = match act_a {
            Act::Set(attr, v) => Some((attr, self.begin_write(si, attr, v), start_a)),
            _ => None,
        };
        let svc_a = self.insts[ia].svc.clone();
        let req_a = svc_a.request(RequestInfo::new(path_a).session_id(cookie.as_deref()));
        let (mut l_a, mut s_a) = load(&req_a, false).await;
        self.check_load(si, &what_a, &l_a, true, None);

        let snapshot: BTreeMap<&'static str, Vec<Option<u64>>> =
            ATTRS.iter().map(|a| (*a, self.allowed(si, a))).collect();
        let mut start_b = self.tick();
        let write_b = match act_b {
            Act::Set(attr, v) => Some((attr, self.begin_write(si, attr, v), start_b)),
            _ => None,
        };
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let svc_b = self.insts[ib].svc.clone();
        let cookie_b = cookie.clone();
        let task_b = tokio::spawn(async move {
            let req = svc_b.request(RequestInfo::new(path_b).session_id(cookie_b.as_deref()));
            let (l, s) = load(&req, false).await;
            let _ = loaded_tx.send(());
            let _ = go_rx.await;
            if let Some(s) = &s {
                apply(s, act_b);
            }
            drop(s);
            (l, req.finish().await)
        });
        let b_loaded = tokio::time::timeout(Duration::from_millis(300), loaded_rx)
            .await
            .is_ok();

        let mut order = Vec::new();
        let mut results: BTreeMap<char, (Load, Result<SaveOutcome, SessionError>)> =
            BTreeMap::new();
        let b_early = b_first && b_loaded;
        let mut task_b = Some(task_b);
        let mut go_tx = Some(go_tx);
        for side in if b_early { ['B', 'A'] } else { ['A', 'B'] } {
            if side == 'A' {
                if let Some(s) = s_a.take() {
                    apply(&s, act_a);
                }
                let fin_a = req_a.finish().await;
                self.tick();
                results.insert('A', (std::mem::replace(&mut l_a, Load::Absent), fin_a));
            } else {
                if !b_loaded && self.locked {
                    // B was waiting for A's lock: it loads after A finished.
                    start_b = self.now;
                }
                if let Some(go) = go_tx.take() {
                    let _ = go.send(());
                }
                let task = task_b.take().unwrap();
                let r = tokio::time::timeout(Duration::from_secs(30), task)
                    .await
                    .unwrap_or_else(|_| self.harness(format!("{what_b}: hung for 30 s")))
                    .unwrap();
                self.tick();
                results.insert('B', r);
            }
            order.push(side);
        }
        self.c.requests += 2;
        self.shared_overlap = same;
        let mut invalidated_by: Option<char> = None;
        for side in order {
            let (l, fin) = &results[&side];
            let (what, act, write, inst) = if side == 'A' {
                (&what_a, act_a, write_a, ia)
            } else {
                (&what_b, act_b, write_b.map(|(a, w, _)| (a, w, start_b)), ib)
            };
            self.log(format!(
                "{what} -> {l:?} / {fin:?} (B loaded early: {b_loaded})"
            ));
            if side == 'B' {
                let must = act_a != Act::Invalidate;
                // B loaded before A's logout finished, or (unlocked modes: nothing makes
                // B wait) its load, started before A finished, overlapped the logout: the
                // session may have been live for it.
                if invalidated_by == Some('A') && (b_loaded || !self.locked) {
                    self.sessions[si].life = Life::Live;
                    self.check_load(si, what, l, must, Some(&snapshot));
                    self.sessions[si].life = Life::Invalidated;
                } else {
                    self.check_load(si, what, l, must, Some(&snapshot));
                }
                if matches!(l, Load::Found(..))
                    && invalidated_by == Some('A')
                    && !b_loaded
                    && self.locked
                {
                    self.violation(format!("{what}: loaded the session after A's logout"));
                }
            }
            if let Some(other) = invalidated_by {
                // This request finished after the other one's acknowledged logout.
                // An async instance's `written` means queued: the queued write then
                // finds the tombstone and is dropped (checked by every later load).
                let queued_only = self.insts[inst].kind == Kind::StickyAsync;
                if let Ok(out) = fin {
                    if out.written && !queued_only {
                        self.violation(format!(
                            "{what}: wrote session s{si} after request {other}'s logout was \
                             acknowledged: {out:?}"
                        ));
                    }
                }
                if let Some((attr, wid, _)) = write {
                    self.refuse(si, attr, wid);
                }
                if matches!(l, Load::Failed(_)) {
                    if let Ok(out) = fin {
                        self.check_cookie(si, what, l, out, false);
                    }
                }
                continue;
            }
            if let Ok(out) = fin {
                if act != Act::Invalidate || !matches!(l, Load::Found(..)) {
                    self.check_cookie(si, what, l, out, true);
                }
            }
            if act == Act::Invalidate && matches!(l, Load::Found(..)) {
                match fin {
                    Ok(out) if out.cookie == CookieDecision::Remove => {
                        self.sessions[si].life = Life::Invalidated;
                        self.sessions[si].cookie = None;
                        self.c.invalidations += 1;
                        invalidated_by = Some(side);
                        // The other side's write, if still pending, can never land.
                    }
                    Ok(out) => {
                        self.violation(format!("{what}: logout did not remove the cookie: {out:?}"))
                    }
                    Err(_) => {
                        self.sessions[si].life = Life::Retired;
                        self.shared_overlap = false;
                        return;
                    }
                }
                continue;
            }
            if self.sessions[si].life == Life::Live {
                self.settle(si, inst, what, l, fin, write);
            }
        }
        self.shared_overlap = false;
        if self.sessions[si].life == Life::Live {
            self.sessions[si].requested_since_fault = true;
        }
    }

    /// The browser of live session `si` logs in again: its id is rotated. The old key's
    /// session is dead from then on (every id of it); the new key carries the data.
    async fn op_rotate(&mut self, si: usize, inst: usize) {
        // Async writes queued for the old key on another instance would land on its
        // tombstone (docs/session.md: rotate on the owner, or flush first).
        for i in 0..self.insts.len() {
            if self.insts[i].kind == Kind::StickyAsync {
                self.op_flush(i).await;
            }
        }
        let svc = self.insts[inst].svc.clone();
        let cookie = self.sessions[si].cookie.clone();
        self.tick();
        let req = svc.request(RequestInfo::new("/login").session_id(cookie.as_deref()));
        let l = match req.cycle_id().await {
            Err(e) => Load::Failed(e.to_string()),
            Ok(None) => Load::Absent,
            Ok(Some(s)) => observe(&s),
        };
        let fin = req.finish().await;
        self.tick();
        self.c.requests += 1;
        let what = format!("rotate s{si} via {}", self.insts[inst].name);
        self.log(format!("{what} -> {l:?} / {fin:?}"));
        self.check_load(si, &what, &l, true, None);
        if !matches!(l, Load::Found(..)) {
            if let Ok(out) = &fin {
                self.check_cookie(si, &what, &l, out, true);
            }
            return;
        }
        self.sessions[si].requested_since_fault = true;
        let out = match fin {
            Ok(out) => out,
            Err(e) => {
                // Partly done under a fault (new key written, old one partly retired):
                // no longer checked. Outside a fault it is a failure.
                if self.fault.is_none() {
                    self.violation(format!("{what}: rotation failed without a fault: {e}"));
                }
                self.sessions[si].life = Life::Retired;
                return;
            }
        };
        if let Some(ni) = self.adopt_rotation(si, &what, &out, Life::Live) {
            self.sessions[si].life = Life::Invalidated;
            self.sessions[si].cookie = None;
            self.c.rotations += 1;
            let carried: Vec<_> = self
                .uncertain
                .iter()
                .filter(|(s, ..)| *s == si)
                .map(|&(_, a, w)| (ni, a, w))
                .collect();
            self.uncertain.extend(carried);
            self.log(format!("  -> s{si} dead, data now s{ni}"));
        }
    }

    /// The new id a rotation of `si` gave (`out`), added to the model as a session of
    /// its own in state `life`, with `si`'s attribute candidates; its index. `None` (a
    /// violation) when the rotation gave no new id.
    fn adopt_rotation(
        &mut self,
        si: usize,
        what: &str,
        out: &SaveOutcome,
        life: Life,
    ) -> Option<usize> {
        let new = match &out.cookie {
            CookieDecision::Set(id) => SessionId::parse(id),
            _ => None,
        };
        let Some(new) = new.filter(|n| n.key() != self.sessions[si].key) else {
            self.violation(format!("{what}: no new id given: {out:?}"));
            return None;
        };
        let id = new.to_string();
        let moved = Sess {
            key: new.key(),
            cookie: (life == Life::Live).then(|| id.clone()),
            ids: vec![id],
            life,
            attrs: self.sessions[si].attrs.clone(),
            requested_since_fault: true,
            principal: self.sessions[si].principal,
            unrequested_principal_logout: false,
        };
        self.sessions.push(moved);
        Some(self.sessions.len() - 1)
    }

    /// A logout and a login (id rotation) of live session `si` on two instances, each
    /// loading before the other finishes: the logout loads, the rotation runs whole,
    /// then the logout finishes (`logout_first`); or the rotation loads, the logout runs
    /// whole, then the rotation finishes. Either way an acknowledged logout leaves no
    /// id of the session - the old one, nor one the rotation gave - serving it (I1,
    /// docs/session.md "Id rotation"). Only where nothing locks (a lock serializes them).
    async fn op_logout_racing_rotation(&mut self, si: usize) {
        for i in 0..self.insts.len() {
            if self.insts[i].kind == Kind::StickyAsync {
                self.op_flush(i).await;
            }
        }
        let n = self.insts.len() as u64;
        let il = self.inst_for(si);
        let ir = (il + 1 + self.rng.below(n - 1) as usize) % n as usize;
        let logout_first = self.rng.chance(50);
        let cookie = self.sessions[si].cookie.clone();
        let what = format!(
            "logout via {} racing a rotation via {} of s{si} ({} loads first)",
            self.insts[il].name,
            self.insts[ir].name,
            if logout_first { "logout" } else { "rotation" }
        );
        let svc_l = self.insts[il].svc.clone();
        let svc_r = self.insts[ir].svc.clone();
        let logout = svc_l.request(RequestInfo::new("/logout").session_id(cookie.as_deref()));
        let login = svc_r.request(RequestInfo::new("/login").session_id(cookie.as_deref()));
        let rotate_load = |r: Result<Option<Session>, SessionError>| match r {
            Err(e) => Load::Failed(e.to_string()),
            Ok(None) => Load::Absent,
            Ok(Some(s)) => observe(&s),
        };
        self.tick();
        let (l_logout, l_rotate, fin_rotate, fin_logout);
        if logout_first {
            let (l, s) = load(&logout, false).await;
            l_logout = l;
            l_rotate = rotate_load(login.cycle_id().await);
            fin_rotate = login.finish().await;
            if let Some(s) = &s {
                apply(s, Act::Invalidate);
            }
            drop(s);
            fin_logout = logout.finish().await;
        } else {
            l_rotate = rotate_load(login.cycle_id().await);
            let (l, s) = load(&logout, false).await;
            l_logout = l;
            if let Some(s) = &s {
                apply(s, Act::Invalidate);
            }
            drop(s);
            fin_logout = logout.finish().await;
            fin_rotate = login.finish().await;
        }
        self.tick();
        self.c.requests += 2;
        self.c.logout_rotation_races += 1;
        self.log(format!(
            "{what}: logout {l_logout:?} / {fin_logout:?}; rotation {l_rotate:?} / {fin_rotate:?}"
        ));
        self.check_load(si, &format!("{what}: logout"), &l_logout, true, None);
        self.check_load(si, &format!("{what}: rotation"), &l_rotate, true, None);
        self.sessions[si].requested_since_fault = true;
        let logged_out = match (&l_logout, &fin_logout) {
            (Load::Found(..), Ok(out)) if out.cookie == CookieDecision::Remove => Life::Invalidated,
            (Load::Found(..), Ok(out)) => {
                self.violation(format!("{what}: logout did not remove the cookie: {out:?}"));
                return;
            }
            // Failed under a fault, or nothing loaded: the outcome is not modelled.
            _ => Life::Retired,
        };
        if logged_out == Life::Retired && self.fault.is_none() {
            self.violation(format!(
                "{what}: logout failed without a fault: {fin_logout:?}"
            ));
        }
        self.sessions[si].life = logged_out;
        self.sessions[si].cookie = None;
        self.c.invalidations += 1;
        match (&l_rotate, &fin_rotate) {
            (Load::Found(..), Ok(out)) if matches!(out.cookie, CookieDecision::Set(_)) => {
                // The rotation was acknowledged: its id is dead with the logout.
                if let Some(ni) = self.adopt_rotation(si, &what, out, logged_out) {
                    self.c.rotations += 1;
                    self.log(format!(
                        "  -> s{si} and its rotated id s{ni}: {logged_out:?}"
                    ));
                }
            }
            (_, Err(e)) if self.fault.is_none() => {
                self.violation(format!("{what}: rotation failed without a fault: {e}"))
            }
            _ => {}
        }
    }

    /// A request of live session `si` binds it to principal `p`.
    async fn op_bind(&mut self, si: usize, inst: usize, p: &'static str) {
        let svc = self.insts[inst].svc.clone();
        let cookie = self.sessions[si].cookie.clone();
        self.tick();
        let req = svc.request(RequestInfo::new("/bind").session_id(cookie.as_deref()));
        let l = match req.session().await {
            Err(e) => Load::Failed(e.to_string()),
            Ok(None) => Load::Absent,
            Ok(Some(s)) => {
                let l = observe(&s);
                match req.bind_principal(p).await {
                    Ok(_) => l,
                    Err(e) => Load::Failed(format!("bind: {e}")),
                }
            }
        };
        let fin = req.finish().await;
        self.tick();
        self.c.requests += 1;
        let what = format!("bind s{si} to {p} via {}", self.insts[inst].name);
        self.log(format!("{what} -> {l:?} / {fin:?}"));
        self.check_load(si, &what, &l, true, None);
        if let Ok(out) = &fin {
            self.check_cookie(si, &what, &l, out, true);
        }
        if !matches!(l, Load::Found(..)) {
            return;
        }
        self.sessions[si].requested_since_fault = true;
        self.sessions[si].principal = match &fin {
            Ok(out) if out.written => {
                self.c.binds += 1;
                Some((p, true))
            }
            Ok(out) => {
                self.violation(format!("{what}: the binding was not written: {out:?}"));
                None
            }
            Err(_) => Some((p, false)),
        };
    }

    /// Logs principal `p` out everywhere: every session bound to it is dead.
    async fn op_log_out_everywhere(&mut self, inst: usize, p: &'static str) {
        let svc = self.insts[inst].svc.clone();
        self.tick();
        let r = svc.invalidate_principal(p).await;
        self.tick();
        self.log(format!(
            "log out everywhere {p} via {} -> {r:?}",
            self.insts[inst].name
        ));
        for s in &mut self.sessions {
            let Some((bound, certain)) = s.principal else {
                continue;
            };
            if bound != p || s.life != Life::Live {
                continue;
            }
            s.life = match (&r, certain) {
                (Ok(_), true) => {
                    s.cookie = None;
                    s.unrequested_principal_logout = true;
                    self.c.principal_logouts += 1;
                    Life::Invalidated
                }
                _ => Life::Retired,
            };
        }
        if let Err(e) = r {
            if self.fault.is_none() {
                self.violation(format!(
                    "log out everywhere {p} failed without a fault: {e}"
                ));
            }
        } else {
            self.c.invalidations += 1;
        }
    }

    async fn op_flush(&mut self, inst: usize) {
        let svc = self.insts[inst].svc.clone();
        if tokio::time::timeout(Duration::from_secs(30), svc.flush())
            .await
            .is_err()
        {
            self.harness(format!("flush of {} hung for 30 s", self.insts[inst].name));
        }
        self.tick();
        let pending = std::mem::take(&mut self.async_pending[inst]);
        self.log(format!(
            "flush {} ({} queued writes)",
            self.insts[inst].name,
            pending.len()
        ));
        self.settle_writes(pending);
    }

    async fn op_restart_instance(&mut self, inst: usize) {
        let (name, kind, locking) = {
            let i = &self.insts[inst];
            (i.name.clone(), i.kind, i.locking)
        };
        // Peer backend: an instance restart is a peer fault (op_fault), not an extra one.
        if kind == Kind::StickyAsync || matches!(self.cluster, Backend::Peers(_)) {
            return;
        }
        self.insts[inst].svc = build(&self.cluster, &name, kind, locking);
        self.tick();
        self.log(format!("restart instance {name} (memory lost)"));
    }

    async fn op_fault(&mut self) {
        let cluster = match &mut self.cluster {
            Backend::Memcached(c) => c,
            Backend::Peers(_) => return self.op_peer_fault().await,
        };
        let node = self.rng.below(cluster.len() as u64) as usize;
        let fault = match self.rng.below(3) {
            0 => {
                cluster[node].kill();
                Fault::Killed(node)
            }
            1 => {
                cluster[node].restart();
                Fault::Restarted(node)
            }
            _ => {
                cluster[node].pause();
                Fault::Paused(node)
            }
        };
        self.fault_begins(fault);
    }

    /// Peer backend: a sync instance dies and comes back empty (its memory and its
    /// endpoint's copies lost; async instances are not restarted: their queue is the
    /// documented loss window).
    async fn op_peer_fault(&mut self) {
        let sync: Vec<usize> = (0..self.insts.len())
            .filter(|&i| self.insts[i].kind == Kind::StickySync)
            .collect();
        let inst = sync[self.rng.below(sync.len() as u64) as usize];
        let (name, kind, locking) = {
            let i = &self.insts[inst];
            (i.name.clone(), i.kind, i.locking)
        };
        // The old service (and its endpoint) is dropped before the new one binds.
        let placeholder = self.insts[(inst + 1) % self.insts.len()].svc.clone();
        drop(std::mem::replace(&mut self.insts[inst].svc, placeholder));
        self.insts[inst].svc = build(&self.cluster, &name, kind, locking);
        self.fault_begins(Fault::Restarted(inst));
    }

    fn fault_begins(&mut self, fault: Fault) {
        self.tick();
        self.c.faults += 1;
        self.fault = Some(fault);
        self.ops_since_fault = 0;
        for s in &mut self.sessions {
            s.requested_since_fault = false;
        }
        self.log(format!("FAULT {fault:?}"));
    }

    /// Ends the fault, waits until every instance sees every node up, then requests
    /// every live session once (re-creating missing copies).
    async fn op_heal(&mut self) {
        let Some(fault) = self.fault else { return };
        if let Backend::Memcached(cluster) = &mut self.cluster {
            match fault {
                Fault::Killed(n) => cluster[n].restart(),
                Fault::Paused(n) => cluster[n].resume(),
                Fault::Restarted(_) => {}
            }
        }
        let svcs: Vec<BackupSessionService> = self.insts.iter().map(|i| i.svc.clone()).collect();
        let refs: Vec<&BackupSessionService> = svcs.iter().collect();
        if !wait_nodes_up(&refs, Duration::from_secs(20)).await {
            self.harness(format!("heal of {fault:?}: nodes not seen up within 20 s"));
        }
        self.tick();
        self.fault = None;
        let uncertain = std::mem::take(&mut self.uncertain);
        self.settle_writes(uncertain);
        self.log(format!("HEAL {fault:?}"));
        // Healing includes the hinted handoff (docs/session.md: a node back from an
        // absence gets what it missed within a second; a second fault in that second,
        // of the nodes holding the hints, is a second simultaneous fault).
        let delivered = svcs[0].deliver_hints().await;
        self.log(format!("  hints delivered: {delivered}"));
        for si in self.live() {
            for attempt in 0..10 {
                let inst = self.inst_for(si);
                self.op_request(si, inst, "/read", Act::Nothing).await;
                if self.sessions[si].requested_since_fault || self.sessions[si].life != Life::Live {
                    break;
                }
                if attempt == 9 {
                    self.violation(format!("heal: session s{si} unavailable after the heal"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Sessions logged out everywhere: one request each (checked like every probe).
        let logged_out: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| self.sessions[i].unrequested_principal_logout)
            .collect();
        for si in logged_out {
            let inst = self.rng.below(self.insts.len() as u64) as usize;
            self.op_forged(si, inst).await;
            self.sessions[si].unrequested_principal_logout = false;
        }
    }

    async fn step(&mut self) {
        self.ops_since_fault += 1;
        if self.fault.is_some() && self.ops_since_fault >= 15 {
            return self.op_heal().await;
        }
        let live = self.live();
        let invalidated = self.invalidated();
        if live.len() < 3 || (live.len() < MAX_LIVE && self.rng.chance(8)) {
            let inst = self.rng.below(self.insts.len() as u64) as usize;
            return self.op_create(inst, None, None).await;
        }
        let si = self.pick(&live);
        let r = self.rng.below(100);
        match r {
            0..=29 if self.may("write") => {
                let inst = self.inst_for(si);
                let path = self.write_path();
                let act = self.random_set();
                self.op_request(si, inst, path, act).await
            }
            35..=39 if self.may("rotate") => {
                let unlocked = self
                    .insts
                    .iter()
                    .all(|i| i.kind != Kind::NonSticky || i.locking == "none");
                if unlocked && self.may("logout") && self.rng.chance(30) {
                    return self.op_logout_racing_rotation(si).await;
                }
                let inst = self.inst_for(si);
                self.op_rotate(si, inst).await
            }
            40..=44 if self.may("principal") => {
                let inst = self.inst_for(si);
                let random = PRINCIPALS[self.rng.below(PRINCIPALS.len() as u64) as usize];
                match self.sessions[si].principal {
                    None if self.rng.chance(75) => self.op_bind(si, inst, random).await,
                    Some((p, _)) if self.rng.chance(50) => {
                        self.op_log_out_everywhere(inst, p).await
                    }
                    _ => self.op_log_out_everywhere(inst, random).await,
                }
            }
            30..=44 => {
                let inst = self.inst_for(si);
                self.op_request(si, inst, "/read", Act::Nothing).await
            }
            45..=50 if self.may("logout") => {
                let inst = self.inst_for(si);
                self.op_request(si, inst, "/logout", Act::Invalidate).await
            }
            51..=62 if self.may("overlap") => self.op_overlap(si).await,
            63..=70 if self.may("forged") => {
                let inst = self.rng.below(self.insts.len() as u64) as usize;
                self.op_forged(si, inst).await
            }
            71..=77 if !invalidated.is_empty() && self.may("forged") => {
                let gone = self.pick(&invalidated);
                let inst = self.rng.below(self.insts.len() as u64) as usize;
                self.op_forged(gone, inst).await
            }
            78..=80 if !invalidated.is_empty() && self.may("create") => {
                let gone = self.pick(&invalidated);
                let id = self.sessions[gone].ids.last().cloned();
                let inst = self.rng.below(self.insts.len() as u64) as usize;
                self.op_create(inst, id, Some(gone)).await
            }
            81..=86 if self.may("fault") => {
                let all_requested = self
                    .sessions
                    .iter()
                    .all(|s| s.life != Life::Live || s.requested_since_fault);
                if self.fault.is_none() && all_requested {
                    self.op_fault().await
                } else if self.fault.is_some() && self.ops_since_fault >= 6 {
                    self.op_heal().await
                } else {
                    let inst = self.inst_for(si);
                    self.op_request(si, inst, "/read", Act::Nothing).await
                }
            }
            87..=92 if self.has_async() && self.may("flush") => {
                let inst = self
                    .insts
                    .iter()
                    .position(|i| i.kind == Kind::StickyAsync)
                    .unwrap();
                self.op_flush(inst).await
            }
            93..=95 if self.may("restart") => {
                let inst = self.rng.below(self.insts.len() as u64) as usize;
                self.op_restart_instance(inst).await
            }
            _ => {
                let inst = self.inst_for(si);
                self.op_request(si, inst, "/read", Act::Nothing).await
            }
        }
    }

    /// After the run: heal, flush, then every live session read as the model says and
    /// every invalidated one absent for every id on every instance.
    async fn final_check(&mut self) {
        if self.fault.is_some() {
            self.op_heal().await;
        }
        for inst in 0..self.insts.len() {
            if self.insts[inst].kind == Kind::StickyAsync {
                self.op_flush(inst).await;
            }
        }
        self.log("FINAL CHECK".into());
        for inst in 0..self.insts.len() {
            let st = self.insts[inst].svc.stats();
            let line = format!(
                "  {}: hints delivered {}, hint failures {}",
                self.insts[inst].name, st.hints_delivered, st.hint_failures
            );
            self.log(line);
        }
        for si in 0..self.sessions.len() {
            match self.sessions[si].life {
                Life::Live => {
                    let inst = self.inst_for(si);
                    self.op_request(si, inst, "/read", Act::Nothing).await;
                }
                Life::Invalidated => {
                    let routes: Vec<&str> = self.routes.iter().map(String::as_str).collect();
                    let mut ids = self.sessions[si].ids.clone();
                    ids.extend(id_variants(
                        self.sessions[si].key,
                        &self.cluster.ids(),
                        &routes,
                    ));
                    for id in ids {
                        for inst in 0..self.insts.len() {
                            let svc = self.insts[inst].svc.clone();
                            let (l, _) =
                                request(&svc, "/read", Some(&id), Act::Nothing, false).await;
                            let what = format!("final probe {id} via {}", self.insts[inst].name);
                            self.c.probes += 1;
                            if matches!(l, Load::Found(..)) {
                                self.log(format!("{what} -> {l:?}"));
                            }
                            self.check_load(si, &what, &l, false, None);
                        }
                    }
                }
                Life::Retired => {}
            }
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_family(family: &'static str, instances: &[(&str, Kind, &'static str)]) {
    run_family_on(family, instances, None).await;
}

/// `peers`: run on the peer backend with these backups instead of 3 memcached nodes.
async fn run_family_on(
    family: &'static str,
    instances: &[(&str, Kind, &'static str)],
    peers: Option<memkeep::session::peer::Backups>,
) {
    let seed = Rng::seed_from_env();
    let ops = env_u64("MEMKEEP_MODEL_OPS", 150);
    let cap = Duration::from_secs(env_u64("MEMKEEP_MODEL_SECS", 14));
    println!(
        "model family {family}: seed {seed} (replay with MEMKEEP_TEST_SEED={seed}), \
         {ops} operations, wall-clock cap {cap:?}"
    );
    let family_salt = family
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let cluster = match peers {
        None => Backend::Memcached(Cluster::start(3)),
        Some(backups) => {
            let names: Vec<&str> = instances.iter().map(|i| i.0).collect();
            Backend::Peers(Peers::named(&names, backups))
        }
    };
    let insts: Vec<Inst> = instances
        .iter()
        .map(|(name, kind, locking)| Inst {
            name: name.to_string(),
            kind: *kind,
            locking,
            svc: build(&cluster, name, *kind, locking),
        })
        .collect();
    if matches!(cluster, Backend::Peers(_)) {
        let refs: Vec<&BackupSessionService> = insts.iter().map(|i| &i.svc).collect();
        assert!(
            wait_nodes_up(&refs, Duration::from_secs(10)).await,
            "every peer sees every other up"
        );
    }
    let sticky = instances[0].1 != Kind::NonSticky;
    let routes = if sticky {
        instances.iter().map(|i| i.0.to_string()).collect()
    } else {
        vec!["r0".to_string()]
    };
    let n = insts.len();
    let mut world = World {
        family,
        seed,
        rng: Rng::new(seed ^ family_salt),
        cluster,
        insts,
        routes,
        sessions: Vec::new(),
        now: 0,
        next_id: 0,
        history: Vec::new(),
        started: Instant::now(),
        fault: None,
        ops_since_fault: 0,
        uncertain: Vec::new(),
        async_pending: vec![Vec::new(); n],
        locked: instances[0].2 == "all",
        keep_going: env_u64("MEMKEEP_MODEL_KEEP_GOING", 0) == 1,
        shared_overlap: false,
        only: std::env::var("MEMKEEP_MODEL_ONLY")
            .ok()
            .map(|v| v.split(',').map(|k| k.trim().to_owned()).collect()),
        violations: Vec::new(),
        c: Counters::default(),
    };
    let started = Instant::now();
    let mut done = 0;
    while done < ops && started.elapsed() < cap {
        world.step().await;
        done += 1;
    }
    world.final_check().await;
    println!(
        "model family {family}: {done} operations in {:?}, {} sessions, counters {:?}",
        started.elapsed(),
        world.sessions.len(),
        world.c
    );
    assert!(
        world.violations.is_empty(),
        "{} MODEL VIOLATION(S) in family {family} (seed {seed}; replay with \
         MEMKEEP_TEST_SEED={seed}):\n{}",
        world.violations.len(),
        world.violations.join("\n")
    );
    assert!(
        world.c.acked_writes > 0 && world.c.requests >= done / 2,
        "the run did something"
    );
}

const STICKY: &[(&str, Kind, &str)] = &[
    ("r0", Kind::StickySync, "none"),
    ("r1", Kind::StickySync, "none"),
    ("r2", Kind::StickyAsync, "none"),
];
const NONE: &[(&str, Kind, &str)] = &[
    ("i0", Kind::NonSticky, "none"),
    ("i1", Kind::NonSticky, "none"),
    ("i2", Kind::NonSticky, "none"),
];
const ALL: &[(&str, Kind, &str)] = &[
    ("i0", Kind::NonSticky, "all"),
    ("i1", Kind::NonSticky, "all"),
];
const AUTO: &[(&str, Kind, &str)] = &[
    ("i0", Kind::NonSticky, "auto"),
    ("i1", Kind::NonSticky, "auto"),
    ("i2", Kind::NonSticky, "auto"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_sticky_sync_and_async() {
    run_family("sticky", STICKY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_peers_sticky_sync_and_async() {
    run_family_on("peers", STICKY, Some(memkeep::session::peer::Backups::One)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_non_sticky_locking_none() {
    run_family("non-sticky none", NONE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_non_sticky_locking_all() {
    run_family("non-sticky all", ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_non_sticky_locking_auto() {
    run_family("non-sticky auto", AUTO).await;
}

/// Operations of history printed on a violation (`MEMKEEP_MODEL_TAIL`, default 40).
fn history_tail() -> usize {
    std::env::var("MEMKEEP_MODEL_TAIL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}
