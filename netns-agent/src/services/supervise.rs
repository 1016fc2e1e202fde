//! One restart-with-backoff supervisor for the agent's child daemons (dnsmasq, charon):
//! a life runs until it ends or a stop is asked; an ended life is followed by the next
//! after a backoff that doubles from 1 s to 30 s and starts over after a life of a minute.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};

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

    #[tokio::test(start_paused = true)]
    async fn ended_lives_restart_with_growing_backoff_and_a_stop_ends_supervision() {
        let lives = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, s) = (lives.clone(), starts.clone());
        let t0 = tokio::time::Instant::now();
        let sup = Supervised::spawn(move |mut stopped| {
            let (l, s) = (l.clone(), s.clone());
            async move {
                s.lock().unwrap().push(t0.elapsed().as_secs());
                if l.fetch_add(1, Ordering::SeqCst) < 3 {
                    return Life::Ended;
                }
                let _ = stopped.changed().await;
                Life::Stopped
            }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(*starts.lock().unwrap(), vec![0, 1, 3, 7], "backoff 1, 2, 4 s");
        sup.stop().await;
        assert_eq!(lives.load(Ordering::SeqCst), 4, "no life after the stop");
    }
}
