//! Load balancing: which endpoint gets the next request.
//!
//! # Power of two choices over peak-EWMA
//!
//! Each pick draws two distinct ready endpoints at random and sends the
//! request to the cheaper one, where
//!
//! ```text
//! cost = peak-EWMA RTT estimate × (pending requests + 1) / (weight × success rate²)
//! ```
//!
//! This is the balancer of Finagle and Linkerd. Two random choices, rather
//! than the global minimum, make each pick O(1) (no scan, no heap keyed on a
//! cost that changes with time) while still avoiding the worst endpoints
//! almost always: the chance of drawing the slowest of `n` twice is `1/n²`.
//! The RTT estimate (peak-EWMA, see `balance/ewma.rs`) reacts to a slow response at once and decays
//! slowly; multiplying by pending requests accounts for load the estimate
//! has not seen yet, which is what stops a newly fast endpoint from being
//! flooded. Dividing by the weight makes an endpoint of weight 2 look half
//! as loaded as its peers, so under load it carries about twice their
//! in-flight requests (the same reading of weights as Linkerd's).
//!
//! # Failures count against success, not latency
//!
//! Latency alone is blind to failures: an endpoint that fails fast looks
//! fastest, and one whose requests time out while it is down takes those
//! timeouts as its estimate and then, once restarted, is starved for the
//! tens of seconds the estimate needs to decay (the simulator's `grpc`
//! seeds 1103 and 2221 showed both at once). So the RTT estimate learns
//! from successful responses only, and failures lower the endpoint's recent
//! success rate (`balance/success.rs`), whose square divides the cost: an
//! endpoint failing half its requests costs four times as much.
//!
//! # A stale endpoint is measured afresh
//!
//! What the balancer knows of an endpoint only changes when the endpoint
//! answers, and an endpoint that looks expensive is not picked. So a slow
//! spell or a crash that has ended could keep an endpoint dark: at light
//! load power-of-two-choices gives every pair to its cheaper member, and
//! any lasting penalty would starve it. When an endpoint has had nothing in
//! flight and no successful response for [`BalanceConfig::stale_after`]
//! (2 s), it is *stale*: a pick that draws it against a fresh endpoint
//! compares the two on load and weight alone, the stale one winning a tie,
//! and if the request it then gets succeeds, its RTT replaces the estimate
//! and its failure history is cleared (good news after a silence replaces
//! what we knew; a failure counts as usual). A slow endpoint therefore
//! takes about one request per `stale_after`, a dead one wins ties until
//! failure accrual ejects it, and a recovered one is back after one
//! answer.
//!
//! # A set that changes under traffic
//!
//! Discovery adds, removes and re-weights endpoints while requests are in
//! flight. Endpoints live in a slab addressed by a generational
//! [`EndpointId`]: removing an endpoint bumps its slot's generation, so it is
//! never picked again, and when one of its in-flight requests completes the
//! stale id simply no longer resolves: [`Balancer::complete`] ignores it. The
//! io layer keeps its connection until those requests finish.
//!
//! The set of pickable endpoints (ready or in probation, weight above zero)
//! is a dense vector maintained on every state change (swap-remove, O(1)),
//! so a pick never looks at an unpickable endpoint.
//!
//! # Failure accrual
//!
//! Every endpoint carries an [`Accrual`] machine. An ejected endpoint leaves
//! the pickable set; the balancer keeps the ejection deadlines in a min-heap,
//! exposes the earliest as [`Balancer::poll_timeout`], and moves endpoints to
//! probation in [`Balancer::handle_timeout`] (which [`Balancer::pick`] also
//! calls, so a caller that only picks still sees recoveries).
//!
//! When every endpoint is ejected, [`Balancer::pick`] does not wait for a
//! backoff to elapse: it ends the ejection that would end first and sends
//! the request there as the probe. Failing everything fast until then would
//! keep a recovered service dark for up to the maximum backoff (a minute),
//! which the simulator showed after an overload (`overload` seeds 3197 and
//! 5818: three seconds of 503s to healthy servers). A broken endpoint still
//! takes one request at a time, its probe. When nothing is pickable even
//! so, `pick` says why: [`PickError::NoEndpoints`] (nothing with a non-zero
//! weight was discovered) or [`PickError::AllEjected`] (every endpoint has
//! its probe in flight; fail fast rather than queue).

mod ewma;
mod success;

use crate::accrual::{Accrual, AccrualConfig, Health, Transition};
use crate::time::{Duration, Instant};
use ewma::PeakEwma;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use success::SuccessRate;

/// Configuration of a [`Balancer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceConfig {
    /// RTT assumed for an endpoint before its first response (default
    /// 30 ms). Low enough that new endpoints get tried, high enough that
    /// they do not take all traffic at once.
    pub default_rtt: Duration,
    /// Time constant of the RTT estimate's decay and of the success rate's
    /// memory (default 10 s).
    pub decay: Duration,
    /// How long what the balancer knows of an idle endpoint (its RTT
    /// estimate and success rate) is trusted without a successful response
    /// (default 2 s); see the [module docs](self).
    pub stale_after: Duration,
    /// Failure accrual of each endpoint.
    pub accrual: AccrualConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            stale_after: Duration::from_secs(2),
            accrual: AccrualConfig::default(),
        }
    }
}

/// A handle to an endpoint of a [`Balancer`]. Stays unique for the
/// balancer's lifetime (up to generation wrap-around after 2³² reuses of
/// one slot): a removed endpoint's id never resolves again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId {
    index: u32,
    generation: u32,
}

/// A request in flight to an endpoint, returned by [`Balancer::pick`]. Hand
/// it back to [`Balancer::complete`] when the request ends, whatever the
/// outcome; it is deliberately not `Clone` so that it is completed once.
#[must_use = "a dispatch must be handed back to Balancer::complete"]
#[derive(Debug, PartialEq, Eq)]
pub struct Dispatch {
    endpoint: EndpointId,
    sent_at: Instant,
    probe: bool,
    /// The endpoint was stale when picked: if this request succeeds, its
    /// RTT replaces the estimate and the failure history is cleared.
    resample: bool,
}

impl Dispatch {
    /// The endpoint the request goes to.
    pub fn endpoint(&self) -> EndpointId {
        self.endpoint
    }
    /// When it was picked; the RTT is measured from here.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }
    /// Whether this request is the endpoint's probation probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// How a dispatched request ended, as far as the endpoint is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The endpoint answered acceptably.
    Success,
    /// The endpoint failed (connection error, reset, a failure response
    /// class the caller counts against it).
    Failure,
    /// The request was abandoned by our side (client gone, deadline): it says
    /// nothing about the endpoint, so neither latency nor accrual learn.
    Cancelled,
}

/// Why no endpoint could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// The set holds no endpoint with a weight above zero.
    #[error("no endpoints: discovery has no endpoint with a non-zero weight")]
    NoEndpoints,
    /// Every endpoint is ejected by failure accrual and has its probe in
    /// flight. Fail fast.
    #[error("all endpoints are ejected by failure accrual")]
    AllEjected,
}

#[derive(Debug)]
struct Endpoint<K> {
    key: K,
    weight: u32,
    ewma: PeakEwma,
    success: SuccessRate,
    pending: u32,
    accrual: Accrual,
    /// Position in `Balancer::ready`, if pickable.
    ready_pos: Option<u32>,
}

impl<K> Endpoint<K> {
    /// `RTT estimate × (pending + 1) / (weight × success rate²)`.
    fn cost(&self, now: Instant, decay_ns: f64) -> f64 {
        self.ewma.estimate(now, decay_ns) * (f64::from(self.pending) + 1.0)
            / (f64::from(self.weight.max(1)) * self.success.cost_divisor(now, decay_ns))
    }

    /// `(pending + 1) / weight`: the cost with what may be stale left out.
    fn load(&self) -> f64 {
        (f64::from(self.pending) + 1.0) / f64::from(self.weight.max(1))
    }

    /// Nothing in flight and no successful response for `stale_after`.
    fn is_stale(&self, now: Instant, stale_after: Duration) -> bool {
        self.pending == 0 && now.saturating_duration_since(self.ewma.sampled_at()) >= stale_after
    }
}

#[derive(Debug)]
struct Slot<K> {
    generation: u32,
    endpoint: Option<Endpoint<K>>,
}

/// A timer: endpoint `index` of `generation` leaves ejection at `at`.
type Timer = Reverse<(Instant, u32, u32)>;

/// A power-of-two-choices, peak-EWMA balancer over a changing endpoint set.
/// `K` is the endpoint's key (typically its socket address). See the
/// [module docs](self).
#[derive(Debug)]
pub struct Balancer<K> {
    config: BalanceConfig,
    decay_ns: f64,
    slots: Vec<Slot<K>>,
    free: Vec<u32>,
    ready: Vec<u32>,
    by_key: BTreeMap<K, EndpointId>,
    timers: BinaryHeap<Timer>,
    /// Live endpoints with a weight above zero.
    weighted: usize,
}

impl<K: Ord + Clone> Balancer<K> {
    /// An empty balancer.
    pub fn new(config: BalanceConfig) -> Self {
        Balancer {
            config,
            decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            slots: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            by_key: BTreeMap::new(),
            timers: BinaryHeap::new(),
            weighted: 0,
        }
    }

    /// Adds the endpoint `key` with `weight` (0 means "known but takes no
    /// traffic"), or re-weights it if it is already present. O(log n).
    pub fn insert(&mut self, now: Instant, key: K, weight: u32) -> EndpointId {
        if let Some(&id) = self.by_key.get(&key) {
            self.set_weight(id, weight);
            return id;
        }
        let endpoint = Endpoint {
            key: key.clone(),
            weight,
            ewma: PeakEwma::new(now, self.config.default_rtt),
            success: SuccessRate::new(now),
            pending: 0,
            accrual: Accrual::new(self.config.accrual),
            ready_pos: None,
        };
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Slot {
                    generation: 0,
                    endpoint: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.endpoint = Some(endpoint);
        let id = EndpointId {
            index,
            generation: slot.generation,
        };
        self.by_key.insert(key, id);
        if weight > 0 {
            self.weighted += 1;
        }
        self.sync_ready(index);
        id
    }

    /// Removes an endpoint: it is never picked again, and completions of its
    /// in-flight requests are ignored. Returns its key, or `None` if the id
    /// is stale. O(log n).
    pub fn remove(&mut self, id: EndpointId) -> Option<K> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let endpoint = slot.endpoint.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        if let Some(pos) = endpoint.ready_pos {
            self.ready_swap_remove(pos);
        }
        if endpoint.weight > 0 {
            self.weighted -= 1;
        }
        self.by_key.remove(&endpoint.key);
        self.free.push(id.index);
        Some(endpoint.key)
    }

    /// Removes the endpoint with this key, if present.
    pub fn remove_key(&mut self, key: &K) -> Option<EndpointId> {
        let id = *self.by_key.get(key)?;
        self.remove(id);
        Some(id)
    }

    /// Changes an endpoint's weight; 0 takes it out of rotation without
    /// forgetting its state. Returns `false` if the id is stale.
    pub fn set_weight(&mut self, id: EndpointId, weight: u32) -> bool {
        let Some(e) = self.endpoint_mut(id) else {
            return false;
        };
        let was = e.weight;
        e.weight = weight;
        match (was > 0, weight > 0) {
            (false, true) => self.weighted += 1,
            (true, false) => self.weighted -= 1,
            _ => {}
        }
        self.sync_ready(id.index);
        true
    }

    /// The id of the endpoint with this key.
    pub fn id_of(&self, key: &K) -> Option<EndpointId> {
        self.by_key.get(key).copied()
    }

    /// The key of an endpoint, if the id is live.
    pub fn key(&self, id: EndpointId) -> Option<&K> {
        self.endpoint(id).map(|e| &e.key)
    }

    /// An endpoint's failure-accrual health, if the id is live.
    pub fn health(&self, id: EndpointId) -> Option<Health> {
        self.endpoint(id).map(|e| e.accrual.health())
    }

    /// An endpoint's requests in flight, if the id is live.
    pub fn pending(&self, id: EndpointId) -> Option<u32> {
        self.endpoint(id).map(|e| e.pending)
    }

    /// An endpoint's RTT estimate at `now`, if the id is live.
    pub fn rtt_estimate(&self, id: EndpointId, now: Instant) -> Option<Duration> {
        self.endpoint(id)
            .map(|e| Duration::from_nanos(e.ewma.estimate(now, self.decay_ns) as u64))
    }

    /// Live endpoints, whatever their weight or health.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Endpoints a pick may choose now (as of the last
    /// [`handle_timeout`](Self::handle_timeout)).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// When the balancer next wants [`handle_timeout`](Self::handle_timeout):
    /// the earliest end of an ejection. May be early (a timer whose endpoint
    /// was since removed), never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Moves endpoints whose ejection has elapsed into probation. Amortised
    /// O(log n) per ejection; O(1) when nothing is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, index, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let id = EndpointId { index, generation };
            // Skip timers of removed endpoints and superseded ejections.
            let Some(e) = self.endpoint_mut(id) else {
                continue;
            };
            if e.accrual.poll_timeout() == Some(at) {
                e.accrual.handle_timeout(now);
                self.sync_ready(index);
            }
        }
    }

    /// Picks the endpoint for a request at `now`: the cheaper of two distinct
    /// pickable endpoints drawn at random. O(1) (plus any due ejection
    /// timers). The returned [`Dispatch`] must be handed back to
    /// [`complete`](Self::complete).
    pub fn pick(&mut self, now: Instant, rng: &mut impl Rng) -> Result<Dispatch, PickError> {
        self.handle_timeout(now);
        let n = self.ready.len();
        let index = match n {
            0 => match self.end_first_ejection() {
                Some(index) => index,
                None => return Err(self.why_empty()),
            },
            1 => self.ready[0],
            _ => {
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ia, ib) = (self.ready[a], self.ready[b]);
                if self.cheaper(ib, ia, now) { ib } else { ia }
            }
        };
        let stale_after = self.config.stale_after;
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation;
        let (probe, resample) = match slot.endpoint.as_mut() {
            Some(e) => {
                let resample = e.is_stale(now, stale_after);
                e.pending = e.pending.saturating_add(1);
                (e.accrual.on_dispatch(), resample)
            }
            None => (false, false),
        };
        if probe {
            self.sync_ready(index);
        }
        Ok(Dispatch {
            endpoint: EndpointId { index, generation },
            sent_at: now,
            probe,
            resample,
        })
    }

    /// Records how a dispatched request ended: updates the endpoint's
    /// pending count, RTT estimate (successes only), success rate and
    /// failure accrual. A dispatch whose endpoint was removed meanwhile is
    /// ignored. Returns the endpoint's health transition, if any.
    pub fn complete(
        &mut self,
        now: Instant,
        dispatch: Dispatch,
        completion: Completion,
        rng: &mut impl Rng,
    ) -> Option<Transition> {
        let decay_ns = self.decay_ns;
        let id = dispatch.endpoint;
        let e = self.endpoint_mut(id)?;
        e.pending = e.pending.saturating_sub(1);
        let transition = match completion {
            Completion::Cancelled => {
                if dispatch.probe {
                    e.accrual.on_probe_cancelled();
                }
                None
            }
            Completion::Success | Completion::Failure => {
                let rtt = now.saturating_duration_since(dispatch.sent_at);
                let success = completion == Completion::Success;
                if success && dispatch.resample {
                    // Good news after a silence replaces what we knew.
                    e.ewma.reset(now, rtt);
                    e.success.reset(now);
                } else if success {
                    e.ewma.observe(now, rtt, decay_ns);
                }
                e.success.observe(now, success, decay_ns);
                let transition = e.accrual.on_response(now, success, dispatch.probe, rng);
                if transition == Some(Transition::Recovered) {
                    // The failures that ejected it are over, and its probe
                    // just measured it afresh.
                    e.success.reset(now);
                    e.ewma.reset(now, rtt);
                }
                transition
            }
        };
        if let Some(Transition::Ejected { until }) = transition {
            self.timers.push(Reverse((until, id.index, id.generation)));
        }
        self.sync_ready(id.index);
        transition
    }

    fn why_empty(&self) -> PickError {
        if self.weighted == 0 {
            PickError::NoEndpoints
        } else {
            PickError::AllEjected
        }
    }

    /// With nothing pickable, puts the weighted endpoint whose ejection
    /// would end first into probation now and returns its index (see the
    /// module docs: a recovered service is not kept waiting for a backoff).
    /// `None` when no weighted endpoint is ejected: every one has its probe
    /// in flight.
    ///
    /// This runs on every request during an outage, so it must stay cheap:
    /// it pops stale timers (removed endpoints, superseded or ended
    /// ejections) off the top of the heap and the promoted endpoint's own,
    /// so the heap holds about one timer per ejected endpoint however many
    /// probes fail. Only when the earliest ejection is of an endpoint
    /// weighted 0 (which takes no traffic but keeps its timer) does it scan.
    fn end_first_ejection(&mut self) -> Option<u32> {
        while let Some(&Reverse((at, index, generation))) = self.timers.peek() {
            let id = EndpointId { index, generation };
            match self.endpoint(id) {
                Some(e) if e.accrual.poll_timeout() == Some(at) => {
                    if e.weight == 0 {
                        break;
                    }
                    self.timers.pop();
                    return self.promote(index);
                }
                _ => {
                    self.timers.pop();
                }
            }
        }
        let (_, index) = self
            .timers
            .iter()
            .filter_map(|&Reverse((at, index, generation))| {
                let e = self.endpoint(EndpointId { index, generation })?;
                let waiting = e.weight > 0 && e.accrual.poll_timeout() == Some(at);
                waiting.then_some((at, index))
            })
            .min()?;
        self.promote(index)
    }

    /// Ends endpoint `index`'s ejection now (its timer, if still queued,
    /// goes stale) and makes it pickable as a probe.
    fn promote(&mut self, index: u32) -> Option<u32> {
        let e = self.slots[index as usize].endpoint.as_mut()?;
        e.accrual.end_ejection_early();
        self.sync_ready(index);
        Some(index)
    }

    /// Whether endpoint `a` is cheaper than `b` at `now`. When exactly one
    /// of them is stale, RTT estimates and success rates are left out of
    /// the comparison and the stale one wins a tie (see the module docs).
    fn cheaper(&self, a: u32, b: u32, now: Instant) -> bool {
        let (Some(ea), Some(eb)) = (
            self.slots[a as usize].endpoint.as_ref(),
            self.slots[b as usize].endpoint.as_ref(),
        ) else {
            return false;
        };
        let stale_after = self.config.stale_after;
        let (a_stale, b_stale) = (ea.is_stale(now, stale_after), eb.is_stale(now, stale_after));
        if a_stale == b_stale {
            return ea.cost(now, self.decay_ns) < eb.cost(now, self.decay_ns);
        }
        let (la, lb) = (ea.load(), eb.load());
        la < lb || (la == lb && a_stale)
    }

    fn endpoint(&self, id: EndpointId) -> Option<&Endpoint<K>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.endpoint.as_ref()
    }

    fn endpoint_mut(&mut self, id: EndpointId) -> Option<&mut Endpoint<K>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.endpoint.as_mut()
    }

    /// Makes membership of `ready` match the endpoint's state.
    fn sync_ready(&mut self, index: u32) {
        let Some(e) = self.slots[index as usize].endpoint.as_mut() else {
            return;
        };
        let pickable = e.weight > 0 && e.accrual.is_available();
        match (pickable, e.ready_pos) {
            (true, None) => {
                e.ready_pos = Some(u32::try_from(self.ready.len()).unwrap_or(u32::MAX));
                self.ready.push(index);
            }
            (false, Some(pos)) => {
                e.ready_pos = None;
                self.ready_swap_remove(pos);
            }
            _ => {}
        }
    }

    fn ready_swap_remove(&mut self, pos: u32) {
        self.ready.swap_remove(pos as usize);
        let Some(&moved) = self.ready.get(pos as usize) else {
            return;
        };
        if let Some(e) = self.slots[moved as usize].endpoint.as_mut() {
            e.ready_pos = Some(pos);
        }
    }
}

#[cfg(test)]
mod tests;
