//! What one app may hold of a service at once (queries in flight, connections): a count
//! per app number, capped, so that a flood or a slow client from one app is shed and
//! the others are still served. Callers that are no app (app number 0) share one count.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// The counts of one kind of thing held, per app number.
pub struct Shares {
    held: Mutex<HashMap<u32, usize>>,
    per_app: usize,
}

/// One thing held by an app: given back when dropped.
pub struct Share {
    shares: Arc<Shares>,
    app_num: u32,
}

impl Shares {
    pub fn new(per_app: usize) -> Arc<Shares> {
        Arc::new(Shares { held: Mutex::new(HashMap::new()), per_app })
    }

    /// One more for app `app_num`, or None when it holds its whole share.
    pub fn take(self: &Arc<Self>, app_num: u32) -> Option<Share> {
        let mut held = self.held.lock().unwrap();
        let n = held.entry(app_num).or_insert(0);
        if *n >= self.per_app {
            return None;
        }
        *n += 1;
        Some(Share { shares: self.clone(), app_num })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap();
        if let Some(n) = held.get_mut(&self.app_num) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.app_num);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_holds_its_share_and_no_more_and_gets_it_back() {
        let shares = Shares::new(2);
        let (a1, a2) = (shares.take(1).unwrap(), shares.take(1).unwrap());
        assert!(shares.take(1).is_none(), "app 1 holds its whole share");
        let b = shares.take(2).expect("another app has its own");
        drop(a1);
        let a3 = shares.take(1).expect("a share given back can be taken again");
        drop((a2, a3, b));
        assert!(shares.held.lock().unwrap().is_empty(), "nothing held, nothing kept");
    }
}
