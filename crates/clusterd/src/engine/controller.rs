//! The controller loop on the leader: runs the pure placement (`cluster_model::controller::plan`)
//! against the leader's lease table, proposes its assignments and runs fences.
//!
//! It plans only when an input of the plan may have changed, and sleeps otherwise:
//!
//! ```text
//!   leadership change (role, term) ─────────────┐
//!   applied index moved ────────────────────────┤
//!   wake_controller(): a renewal revived a      ├──> view + plan ──> proposals, fences
//!           node, a fence ended                 │      │
//!   LeaseTable::next_change (a lease runs out) ─┘      └─ had actions: plan again RETRY later
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cluster_host::{FenceAction, FenceDevice};
use cluster_model::controller::{plan, Action, Liveness, View};
use cluster_model::{ClusterState, Command, CommandOutcome, Settings};
use futures::StreamExt;

use super::{now, wall_ms, Engine};

/// A plan that asked for something is redone after this (a proposal may have failed, a fence runs);
/// also the shortest interval between two such plans.
const RETRY: Duration = Duration::from_millis(20);
/// Longest sleep of the controller: a safety net for a change that nothing signals.
const IDLE: Duration = Duration::from_secs(1);
/// How long a new leader waits for the entries of older terms to be applied before it says so.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);
const FENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// The view the controller plans with: every member's lease as this leader knows it.
/// Read from the applied state, not from [`Engine::snapshot`]: a node that does not lead keeps no
/// copy of the state for a `status` asked of it.
pub(super) fn current_view(engine: &Engine) -> View {
    let (settings, owners) = engine
        .node
        .read_local(|state| (state.settings.clone(), owners(state).map(str::to_owned).collect::<BTreeSet<_>>()));
    let mut table = engine.table.lock().expect("lease table lock");
    view_of(engine, &mut table, &settings, owners.iter().map(String::as_str))
}

/// The owner of every owned package (a node once per package it owns).
fn owners(state: &ClusterState) -> impl Iterator<Item = &str> {
    state.packages.values().filter_map(|package| package.owner.as_deref())
}

fn view_of<'a>(
    engine: &Engine,
    table: &mut cluster_model::LeaseTable,
    settings: &Settings,
    owners: impl Iterator<Item = &'a str>,
) -> View {
    // A node that answers this leader's Raft appends is alive: it gets the new leader's grace to
    // renew its lease; any other node is judged on the bound on older leases alone (liveness only,
    // docs/safety.md).
    for node in engine.node.acknowledged_this_term() {
        table.acknowledged(&node);
    }
    let at = now();
    let nodes: std::collections::BTreeMap<String, Liveness> = engine
        .node
        .members()
        .into_iter()
        .map(|member| {
            // The leader runs this code: it never judges (or fences) itself from its own table.
            let liveness =
                if member.name == engine.me { Liveness::Alive } else { table.liveness(&member.name, at, settings) };
            (member.name, liveness)
        })
        .collect();
    // Owners that are no longer members (`node remove` refuses an undrained node, so only an older
    // cluster or a race leaves them): judged by their lease, which they can no longer renew.
    let departed = owners
        .filter(|owner| !nodes.contains_key(*owner))
        .map(|owner| (owner.to_owned(), table.liveness(owner, at, settings)))
        .collect();
    View { nodes, departed, fencing: engine.fencing.lock().expect("fencing lock").clone() }
}

/// Runs while this node leads: resets the lease table on every new term, then plans whenever
/// something the plan depends on may have changed (the applied state, the view), or the previous
/// plan asked for something (a proposal may have failed). `plan` is a pure function of the two
/// (the time only stamps events), so a wake that changed nothing is skipped; at 1,000 packages it
/// spares a full placement pass.
///
/// The view changes by itself only when a lease runs out, at instants the lease table computes
/// (`LeaseTable::next_change`): the controller sleeps until the next one, so a node's expiry is
/// acted on when it happens, not up to a tick later, and an idle leader wakes about once per lease.
pub(crate) async fn controller_loop(engine: Arc<Engine>) {
    let mut leadership = engine.node.leadership_changes();
    let mut applied = engine.applied.subscribe();
    let mut led_term = None;
    let mut last_planned: Option<(u64, View)> = None;
    loop {
        let Some(term) = engine.node.leadership() else {
            led_term = None;
            last_planned = None;
            // Only a leader plans on a copy of the state; one that lost the lead frees its copy.
            engine.forget_snapshot();
            tokio::select! {
                () = leadership.changed() => {}
                () = tokio::time::sleep(IDLE) => {}
            }
            continue;
        };
        if led_term != Some(term) {
            // A new leader assumes every lease granted before may run one full lease from now ...
            engine.table.lock().expect("lease table lock").elected(now());
            led_term = Some(term);
            last_planned = None;
            // It plans only on its whole log: until an entry of its own term is applied, its state
            // may miss committed entries of older terms, such as a longer `lease` under which an
            // older leader granted the leases it is about to judge (docs/safety.md, "A new
            // leader's state").
            let mut caught_up = false;
            while engine.node.leadership() == Some(term) {
                if engine.node.wait_applied_in_term(term, CATCH_UP_WAIT).await {
                    caught_up = true;
                    break;
                }
                tracing::warn!(term, "leading, but the entries of older terms are not applied yet: not planning");
            }
            if !caught_up {
                continue;
            }
            // ... unless a majority of voters tells when they last acknowledged an older leader:
            // no older lease began after that (docs/safety.md, "A new leader's wait").
            let drift_ppm = engine.snapshot().state.settings.clock_drift_ppm;
            let quiet_since = engine.node.older_leaders_quiet_since(term, drift_ppm).await;
            let bound = quiet_since.map(|at| now().saturating_sub(at.elapsed()));
            if let (Some(bound), Some(true)) = (bound, engine.node.leadership().map(|t| t == term)) {
                engine.table.lock().expect("lease table lock").older_leases_began_before(bound);
                let ago_ms = now().saturating_sub(bound).as_millis() as u64;
                tracing::info!(term, ago_ms, "leading: waiting one lease from the last acknowledgement of an older leader before reassigning packages of unheard nodes");
            } else {
                tracing::info!(term, "leading: waiting one lease before reassigning packages of unheard nodes");
            }
        }
        let snapshot = engine.snapshot();
        settle_leases(&engine).await;
        confirm_expiries(&engine, &snapshot).await;
        // The view and the plan number are taken under one lock: a renewal recorded after this
        // point is in the view, one recorded before waits for this plan (see `Engine::grant`).
        let viewed_at = std::time::Instant::now();
        let (view, plan_number) = {
            let mut table = engine.table.lock().expect("lease table lock");
            let view = view_of(&engine, &mut table, &snapshot.state.settings, owners(&snapshot.state));
            let unchanged =
                last_planned.as_ref().is_some_and(|(applied, last)| *applied == snapshot.applied && *last == view);
            let plan_number = (!unchanged).then(|| table.begin_plan(&view));
            (view, plan_number)
        };
        if let Some(plan_number) = plan_number {
            let started = tokio::time::Instant::now();
            let inputs = (snapshot.applied, view);
            let actions = plan(&snapshot.state, &inputs.1, wall_ms());
            // An empty plan is final for these inputs; a plan with actions is redone.
            let redo = !actions.is_empty();
            last_planned = if redo { None } else { Some(inputs) };
            run_actions(&engine, actions, plan_number, &snapshot.state.settings, viewed_at).await;
            if redo {
                tokio::time::sleep_until(started + RETRY).await;
                continue;
            }
        }
        // Nothing to do until an input changes: the next instant a lease runs out, a leadership
        // change, an applied entry, or a wake (capped by IDLE).
        let settings = &snapshot.state.settings;
        let next_change = engine.table.lock().expect("lease table lock").next_change(now(), settings);
        let sleep = next_change.map_or(IDLE, |at| at.saturating_sub(now()).min(IDLE));
        tokio::select! {
            () = leadership.changed() => {}
            changed = applied.changed() => {
                if changed.is_err() {
                    // The engine is going away; keep the other wake-ups.
                    tokio::time::sleep(sleep).await;
                }
            }
            () = engine.controller_wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Nodes whose lease ended by this leader's table are expired only once a majority of voters
/// confirmed that none kept their lease since (docs/safety.md, "Leases that survive a leader's
/// loss"): ask them now, before the view is taken. Members, and owners that are no longer members.
async fn confirm_expiries(engine: &Engine, snapshot: &super::Snapshot) {
    let settings = engine.settings();
    let mut nodes: Vec<String> = engine.node.members().into_iter().map(|member| member.name).collect();
    for owner in snapshot.state.packages.values().filter_map(|package| package.owner.as_ref()) {
        if !nodes.contains(owner) {
            nodes.push(owner.clone());
        }
    }
    nodes.retain(|node| *node != engine.me);
    let pending = {
        let table = engine.table.lock().expect("lease table lock");
        table.awaiting_confirmation(nodes.iter().map(String::as_str), now(), &settings)
    };
    if pending.is_empty() {
        return;
    }
    // Only a leader a quorum confirmed asks: each answer (its own included) promises refusals, and a
    // leader restarted into its old term (openraft brings a restarted leader back as leader until it
    // meets the newer term) would otherwise make itself refuse the keeps of live nodes.
    let asked = std::time::Instant::now();
    engine.node.heartbeat_now().await;
    if engine.node.confirm_after(asked).await.is_err() {
        tracing::info!(
            nodes = %pending.join(", "),
            "leases ended here, but their expiry is not confirmed: leadership not confirmed by a quorum (nothing moves)"
        );
        return;
    }
    engine.confirm_expiries(pending, &settings).await;
}

/// After a shortening of the lease: once every lease granted with the old, longer wait has ended
/// by this leader's clock, commit that, so that leaders judge unheard nodes with the current wait
/// again (docs/safety.md, "Changing timings at runtime"). Judged with the settings grants use.
async fn settle_leases(engine: &Engine) {
    let due = {
        let table = engine.table.lock().expect("lease table lock");
        table.leases_settled(now(), &engine.settings())
    };
    if let Some(ceiling_us) = due {
        match engine.node.write(Command::LeasesSettled { ceiling_us }).await {
            Ok(CommandOutcome::Applied) => tracing::info!(
                ceiling_ms = ceiling_us / 1_000,
                "every lease granted before the lease was shortened has ended"
            ),
            Ok(other) => tracing::debug!(?other, "lease ceiling not settled"),
            Err(err) => tracing::debug!(error = %err, "lease ceiling not settled"),
        }
    }
}

/// Proposes a plan's commands and starts its fences; the plan is marked done (for waiting
/// grants) once every proposal was answered.
///
/// Fences run only once a quorum confirmed, after the view was taken, that this node still leads:
/// openraft 0.9 does not step down a leader cut off from the quorum, and such a leader sees every
/// node expire and would power off the nodes that follow the new leader (issue 11, trap A).
/// Proposals need no such step: Raft commits them only with a quorum of this leader's term.
async fn run_actions(
    engine: &Arc<Engine>,
    actions: Vec<Action>,
    plan_number: u64,
    settings: &cluster_model::Settings,
    viewed_at: std::time::Instant,
) {
    let mut proposals = Vec::new();
    let mut fences = Vec::new();
    for action in actions {
        match action {
            Action::Propose(command) => proposals.push(command),
            Action::Fence { node, reason } => fences.push((node, reason)),
        }
    }
    // A leader never fences itself (it could not record the fence, and the next leader would fence
    // it again): when a stop failed here and this node has a fence device, it hands leadership over
    // and the next leader fences it.
    if let Some(at) = fences.iter().position(|(node, _)| *node == engine.me) {
        let (_, reason) = fences.remove(at);
        tracing::warn!(%reason, "this node must be fenced: handing leadership over so that another node fences it");
        match engine.node.hand_over_leadership().await {
            Ok(Some(successor)) => tracing::info!(%successor, "leadership handed over"),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "leadership not handed over"),
        }
    }
    if !fences.is_empty() {
        engine.node.heartbeat_now().await;
        match engine.node.confirm_after(viewed_at).await {
            Ok(_) => {
                for (node, reason) in fences {
                    start_fence(engine, node, reason, settings);
                }
            }
            Err(err) => {
                let nodes: Vec<&str> = fences.iter().map(|(node, _)| node.as_str()).collect();
                tracing::warn!(nodes = %nodes.join(", "), error = %err, "not fencing: leadership not confirmed by a quorum");
            }
        }
    }
    // Each assignment is conditional on its own package's epoch, so their order does not
    // matter: a bounded number in flight relocates a dead node's hundreds of packages in a
    // few Raft rounds, without flooding the log (all at once starved the leases: scale
    // benchmark, docs/benchmarks-scale.md). Promotions go after them: they may count on a
    // release of the same plan (the state machine refuses one that comes first).
    let (later, first): (Vec<Command>, Vec<Command>) =
        proposals.into_iter().partition(cluster_model::controller::after_the_others);
    let mut outcomes = propose_all(engine, first).await;
    outcomes.extend(propose_all(engine, later).await);
    let uncertain = outcomes.contains(&false);
    if uncertain {
        // A failed write may still commit: let it apply (or time out) before grants go on.
        let last = engine.node.last_log_index();
        engine.node.wait_applied_after(last.saturating_sub(1), UNCERTAIN_WRITE_WAIT).await;
    }
    engine.table.lock().expect("lease table lock").end_plan(plan_number);
}

/// Proposes `proposals`, a bounded number at once; for each, whether it was committed.
async fn propose_all(engine: &Arc<Engine>, proposals: Vec<Command>) -> Vec<bool> {
    futures::stream::iter(proposals)
        .map(|command| {
            let engine = engine.clone();
            async move {
                let summary = describe(&command);
                match engine.node.write(command).await {
                    Ok(CommandOutcome::Applied) => tracing::info!("{summary}"),
                    Ok(other) => tracing::debug!(?other, "{summary}: not applied"),
                    Err(err) => {
                        tracing::warn!(error = %err, "{summary}: not committed");
                        return false;
                    }
                }
                true
            }
        })
        .buffer_unordered(PROPOSALS_IN_FLIGHT)
        .collect()
        .await
}

/// Proposals of one plan in flight at once.
const PROPOSALS_IN_FLIGHT: usize = 16;

/// How long the controller lets a write with an unknown outcome apply before releasing grants.
const UNCERTAIN_WRITE_WAIT: Duration = Duration::from_secs(5);

fn describe(command: &Command) -> String {
    match command {
        Command::Assign { package, owner, phase, reason, .. } => {
            format!("package {package}: {} on {} ({reason})", phase.as_str(), owner.as_deref().unwrap_or("no node"))
        }
        Command::SetRole { package, role, reason, .. } => format!("package {package}: {} ({reason})", role.as_str()),
        other => format!("{other:?}"),
    }
}

/// Runs the node's fence device in the background; on success the packages it owned are released.
fn start_fence(engine: &Arc<Engine>, node: String, reason: String, settings: &cluster_model::Settings) {
    let Some(config) = settings.fencing.get(&node).cloned() else { return };
    if !engine.fencing.lock().expect("fencing lock").insert(node.clone()) {
        return;
    }
    // The assignments this fence is about: a late record must not release later ones.
    let owned: std::collections::BTreeMap<String, u64> = engine
        .snapshot()
        .state
        .packages
        .iter()
        .filter(|(_, package)| package.owner.as_deref() == Some(node.as_str()))
        .map(|(name, package)| (name.clone(), package.epoch))
        .collect();
    let engine = engine.clone();
    tokio::spawn(async move {
        tracing::warn!(%node, %reason, agent = %config.agent, "fencing");
        let device = FenceDevice { agent: config.agent.clone(), params: config.params.clone() };
        match engine.fencer.fence(&device, &node, FenceAction::Off, FENCE_TIMEOUT).await {
            Ok(()) => {
                tracing::warn!(%node, "fence confirmed: the node is off");
                // Off now: no package is placed on it until it renews its lease again.
                engine.table.lock().expect("lease table lock").fenced(&node, now());
                engine.wake_controller();
                let fenced = Command::NodeFenced { node: node.clone(), owned, at_ms: wall_ms() };
                if let Err(err) = engine.propose(fenced).await {
                    tracing::error!(%node, error = %err, "fenced, but could not record it");
                }
            }
            Err(err) => {
                tracing::error!(%node, error = %err, "fence failed: its packages stay where they are; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        engine.fencing.lock().expect("fencing lock").remove(&node);
        engine.wake_controller();
    });
}
