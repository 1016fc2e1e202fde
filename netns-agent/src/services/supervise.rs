//! One restart-with-backoff supervisor for the agent's child daemons (dnsmasq, charon):
//! a life runs until it ends or a stop is asked; an ended life is followed by the next
//! after a backoff that doubles from 1 s to 30 s and starts over after a life of a minute.

use std::{future::Future, time::Duration};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A life this long was a success: the next failure starts from the first backoff.
const STABLE_LIFE: Duration = Duration::from_secs(60);

/// How a life of the daemon ended.
pub enum Life {
    /// The stop was asked and the daemon is gone: supervision ends.
    Stopped,
    /// It exited or could not start (the life logged why): another life follows.
    Ended,
}

/// A supervised daemon; `stop` ends it and waits until it is reaped.
pub struct Supervised {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Runs `life` again and again until one returns `Life::Stopped`; each life gets the
    /// stop signal (`changed()` fires when the stop is asked).
    pub fn spawn<F, Fut>(mut life: F) -> Supervised
    where
        F: FnMut(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = Life> + Send,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                if let Life::Stopped = life(stopped.clone()).await {
                    return;
                }
                if started.elapsed() > STABLE_LIFE {
                    backoff = FIRST_BACKOFF;
                }
                let mut stopped = stopped.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        Supervised { stop, task }
    }

    /// Asks the current life to stop and waits for the supervision to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use super::*;

    /// Lives that end after the given seconds each (then one that waits for the stop);
    /// returns the supervisor and the start times, in seconds from the spawn.
    fn lives(lengths: Vec<u64>) -> (Supervised, Arc<std::sync::Mutex<Vec<u64>>>, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s) = (count.clone(), starts.clone());
        let t0 = Instant::now();
        let sup = Supervised::spawn(move |mut stopped| {
            let (c, s, lengths) = (c.clone(), s.clone(), lengths.clone());
            async move {
                s.lock().unwrap().push(t0.elapsed().as_secs());
                let n = c.fetch_add(1, Ordering::SeqCst) as usize;
                if let Some(secs) = lengths.get(n) {
                    tokio::time::sleep(Duration::from_secs(*secs)).await;
                    return Life::Ended;
                }
                let _ = stopped.changed().await;
                Life::Stopped
            }
        });
        (sup, starts, count)
    }

    #[tokio::test(start_paused = true)]
    async fn ended_lives_restart_with_growing_backoff_and_a_stop_ends_supervision() {
        let (sup, starts, count) = lives(vec![0, 0, 0]);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(*starts.lock().unwrap(), vec![0, 1, 3, 7], "backoff 1, 2, 4 s");
        sup.stop().await;
        assert_eq!(count.load(Ordering::SeqCst), 4, "no life after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_life_resets_the_backoff_and_a_stop_during_backoff_ends_it() {
        // Ends at 0, 1, 3 (backoff 1, 2, 4), then a life of 100 s (3+4=7 .. 107): the next
        // start follows after 1 s again (108), that life ends at once, backoff 2 s.
        let (sup, starts, count) = lives(vec![0, 0, 0, 100, 0]);
        tokio::time::sleep(Duration::from_secs(109)).await;
        assert_eq!(*starts.lock().unwrap(), vec![0, 1, 3, 7, 108]);
        // Now in the 2 s backoff: the stop ends supervision without another life.
        sup.stop().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(count.load(Ordering::SeqCst), 5);
    }
}
