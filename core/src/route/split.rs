//! Weighted traffic split across backends (blue-green, canary).
//!
//! Smooth weighted round-robin (nginx's algorithm): each pick adds every
//! backend's weight to its running credit, takes the backend with the most
//! credit, and charges it the total weight. It is deterministic, O(backends)
//! per pick (a split has a handful), and exact: after `N` picks backend `i`
//! has been chosen `N × wᵢ / W` times give or take less than the number of
//! backends, at every `N`, not just "eventually" as with random choice. The
//! sequence is also interleaved (weights 1:4 give `b b a b b`, not
//! `a b b b b`), so a canary sees its share smoothly. A weight of 0 earns no
//! credit and is never chosen.
//!
//! Changing a weight keeps the running credits (clamped to ±the new total
//! weight), so the sequence continues instead of restarting. Restarting
//! would starve small weights under frequent updates: at 99:1 the canary
//! needs 100 picks to earn its turn, and zeroing credits every 50 picks
//! would mean it never gets one. The clamp bounds what the old weights can
//! carry over: after a change each backend's count stays within the number
//! of backends, plus one, of its share of the picks since the change.

/// A weighted choice among backends `B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split<B> {
    backends: Vec<Weighted<B>>,
    total: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Weighted<B> {
    backend: B,
    weight: u32,
    credit: i64,
}

impl<B> Split<B> {
    /// A split over `(backend, weight)` pairs.
    pub fn new(backends: impl IntoIterator<Item = (B, u32)>) -> Self {
        let backends: Vec<_> = backends
            .into_iter()
            .map(|(backend, weight)| Weighted {
                backend,
                weight,
                credit: 0,
            })
            .collect();
        let total = backends.iter().map(|b| i64::from(b.weight)).sum();
        Split { backends, total }
    }

    /// A split with one backend taking everything.
    pub fn single(backend: B) -> Self {
        Split::new([(backend, 1)])
    }

    /// The next backend, or `None` if every weight is 0 (Gateway API: the
    /// request fails with a 500, as for a rule without backends).
    pub fn pick(&mut self) -> Option<&B> {
        if self.total == 0 {
            return None;
        }
        let mut best: Option<(usize, i64)> = None;
        for (i, b) in self.backends.iter_mut().enumerate() {
            if b.weight == 0 {
                continue;
            }
            b.credit += i64::from(b.weight);
            if best.is_none_or(|(_, c)| b.credit > c) {
                best = Some((i, b.credit));
            }
        }
        let (i, _) = best?;
        self.backends[i].credit -= self.total;
        Some(&self.backends[i].backend)
    }

    /// Sets the weight of the `index`th backend. The running credits are
    /// kept (clamped to ±the new total), so frequent updates do not starve
    /// small weights. Returns `false` if there is no such backend.
    pub fn set_weight(&mut self, index: usize, weight: u32) -> bool {
        let Some(b) = self.backends.get_mut(index) else {
            return false;
        };
        b.weight = weight;
        self.total = self.backends.iter().map(|b| i64::from(b.weight)).sum();
        let total = self.total;
        for b in &mut self.backends {
            b.credit = b.credit.clamp(-total, total);
        }
        true
    }

    /// The backends and their weights, in order.
    pub fn backends(&self) -> impl Iterator<Item = (&B, u32)> {
        self.backends.iter().map(|b| (&b.backend, b.weight))
    }

    /// The number of backends (whatever their weight).
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the split has no backends.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}
