//! Background work of a service: tracked tasks that end when the service
//! stops, and the loop every subscription runs.

use std::future::Future;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns tasks the service's shutdown waits for; clone it into whatever
/// starts work of its own (a lookup, a write, a reply sent later).
///
/// Tasks must end once [`Background::token`] is cancelled: it trips after
/// the endpoints have drained, and shutdown then waits (bounded by the
/// grace period) for every task spawned here before closing the connections.
#[derive(Clone)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    pub(crate) fn new() -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Runs `task` on the runtime, tracked.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Cancelled when background tasks must stop.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tells the tasks to stop and waits for them, at most `grace`; returns
    /// whether they all ended.
    pub(crate) async fn stop(&self, grace: std::time::Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Feeds every item of `stream` (a subscription) to `handle`, one at a time,
/// until `stop` is cancelled or the stream ends.
pub async fn for_each_until<S, F, Fut>(stream: S, stop: CancellationToken, mut handle: F)
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = stream.next() => match item {
                Some(item) => item,
                None => return,
            },
        };
        handle(item).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn every_item_is_handled_until_the_stream_ends() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        for_each_until(
            futures::stream::iter(0..5),
            CancellationToken::new(),
            |item| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(item, Ordering::SeqCst);
                }
            },
        )
        .await;
        assert_eq!(seen.load(Ordering::SeqCst), 1 + 2 + 3 + 4);
    }

    #[tokio::test]
    async fn a_cancelled_token_ends_the_loop_of_an_endless_stream() {
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let stream = tokio_stream_from(rx);
        let handled = Arc::new(AtomicUsize::new(0));
        let counter = handled.clone();
        let task = tokio::spawn(for_each_until(stream, stop.clone(), move |_| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tx.send(1).unwrap();
        while handled.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        stop.cancel();
        task.await.unwrap();
        assert_eq!(handled.load(Ordering::SeqCst), 1);
        drop(tx);
    }

    #[tokio::test]
    async fn stop_waits_for_tracked_tasks_and_reports_stragglers() {
        let background = Background::new();
        let finished = Arc::new(AtomicUsize::new(0));
        let token = background.token();
        let done = finished.clone();
        background.spawn(async move {
            token.cancelled().await;
            done.fetch_add(1, Ordering::SeqCst);
        });
        assert!(background.stop(Duration::from_secs(5)).await);
        assert_eq!(finished.load(Ordering::SeqCst), 1);

        let stubborn = Background::new();
        stubborn.spawn(std::future::pending());
        assert!(!stubborn.stop(Duration::from_millis(20)).await);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
