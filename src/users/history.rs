//! The last hour of this server's traffic, for the dashboard's chart: the total in 10-second
//! steps and each user's in 1-minute steps, kept only for users that moved bytes in that hour
//! (at most 60 steps of 24 bytes each per user).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::User;

/// How much history is kept, in seconds.
const SPAN: u64 = 3600;
/// The total's step.
const TOTAL_STEP: u64 = 10;
/// A user's step.
const USER_STEP: u64 = 60;

/// `[start of the step (Unix seconds), bytes up, bytes down]`.
type Step = [u64; 3];

/// The traffic history.
#[derive(Default)]
pub struct History {
    inner: std::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each user's counters at the last sample.
    last: HashMap<String, (u64, u64)>,
    total: VecDeque<Step>,
    users: HashMap<String, VecDeque<Step>>,
}

/// Adds `(up, down)` to the step of `at` at the end of `steps`, dropping steps older than
/// the span.
fn add(steps: &mut VecDeque<Step>, step: u64, at: u64, up: u64, down: u64) {
    let start = at - at % step;
    match steps.back_mut() {
        Some(last) if last[0] == start => {
            last[1] += up;
            last[2] += down;
        }
        _ => steps.push_back([start, up, down]),
    }
    while steps.front().is_some_and(|s| s[0] + SPAN <= start) {
        steps.pop_front();
    }
}

impl History {
    /// Counts what `users` moved since the last sample into the step of `now`.
    pub fn sample(&self, users: &[Arc<User>], now: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            last,
            total,
            users: per_user,
        } = &mut *inner;
        let (mut sum_up, mut sum_down) = (0, 0);
        let mut seen = HashMap::with_capacity(users.len());
        for u in users {
            let (_, up, down) = u.counters();
            // A user made anew counts from zero.
            let (was_up, was_down) = match last.get(&u.path) {
                Some(&(a, b)) if a <= up && b <= down => (a, b),
                Some(_) => (0, 0),
                None => (up, down),
            };
            let (du, dd) = (up - was_up, down - was_down);
            seen.insert(u.path.clone(), (up, down));
            sum_up += du;
            sum_down += dd;
            if du + dd > 0 || per_user.contains_key(&u.path) {
                let steps = per_user.entry(u.path.clone()).or_default();
                add(steps, USER_STEP, now, du, dd);
            }
        }
        *last = seen;
        add(total, TOTAL_STEP, now, sum_up, sum_down);
        // Users gone, or idle for the whole span, keep nothing.
        per_user
            .retain(|path, steps| last.contains_key(path) && steps.iter().any(|s| s[1] + s[2] > 0));
    }

    /// `{"total":{"step":10,"points":[[t,up,down]…]},"users":{"step":60,"points":{path:[…]}}}`.
    pub fn json(&self) -> serde_json::Value {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "total": { "step": TOTAL_STEP, "points": inner.total },
            "users": { "step": USER_STEP, "points": inner.users },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_merge_and_age_out() {
        let mut s = VecDeque::new();
        add(&mut s, 10, 1005, 1, 2);
        add(&mut s, 10, 1009, 1, 2);
        add(&mut s, 10, 1010, 5, 0);
        assert_eq!(s, [[1000, 2, 4], [1010, 5, 0]]);
        add(&mut s, 10, 1000 + SPAN + 3, 0, 0);
        assert_eq!(s, [[1010, 5, 0], [1000 + SPAN, 0, 0]]);
    }
}
