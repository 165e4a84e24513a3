//! Acknowledging status updates off the event loop: one call at a time, each carrying every
//! acknowledgement that queued up while the previous one was in flight.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{call, FIND_LEADER};
use crate::client::Masters;
use crate::v1;

/// Most acknowledgements sent in one call (the master takes up to
/// `MAX_ACKNOWLEDGEMENTS`, 1,024).
pub const ACKS_PER_CALL: usize = 256;

/// Most acknowledgements queued for sending. One that does not fit is dropped: the master
/// resends an unacknowledged update, so a dropped acknowledgement costs a duplicate update,
/// never a lost one, and the event loop never waits on the acknowledger.
pub const ACK_QUEUE: usize = 16 * ACKS_PER_CALL;

/// Wait for the next item of `rx`, then take whatever else is already queued, up to `most`
/// in all: a batch as large as what arrived during the caller's last call. `None` once the
/// senders are gone and the queue is empty.
pub async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, most: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < most {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Acknowledges the status updates of one subscription. Dropped with its subscription
/// (what it still holds is sent, or resent to the next subscription by the master).
pub(super) struct Acker {
    tx: mpsc::Sender<v1::Acknowledgement>,
    task: tokio::task::JoinHandle<()>,
}

impl Acker {
    /// Start acknowledging for the subscription `header`.
    pub(super) fn spawn(client: Arc<Masters>, header: v1::CallHeader) -> Acker {
        let (tx, mut rx) = mpsc::channel::<v1::Acknowledgement>(ACK_QUEUE);
        let task = tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut rx, ACKS_PER_CALL).await {
                let req = v1::AcknowledgeRequest {
                    header: Some(header.clone()),
                    acks: batch,
                    ..Default::default()
                };
                // Unacknowledged updates are resent, so a lost ack only costs a duplicate.
                let sent = call(&client, |mut c| {
                    let req = req.clone();
                    async move { c.acknowledge(req).await.map(|_| ()) }
                })
                .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e.message(), acks = req.acks.len(), "acknowledgements not delivered");
                }
            }
        });
        Acker { tx, task }
    }

    /// Queue `ack`; dropped (and resent as an update by the master) when the queue is full.
    pub(super) fn queue(&self, ack: v1::Acknowledgement) {
        if let Err(mpsc::error::TrySendError::Full(ack)) = self.tx.try_send(ack) {
            tracing::debug!(task_id = %ack.task_id, queue = ACK_QUEUE, "acknowledgement queue full; the master will resend the update");
        }
    }

    /// Send everything queued and wait for it, for [`FIND_LEADER`] at most.
    pub(super) async fn flush(self) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(FIND_LEADER, &mut task).await.is_err() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_what_queued_up_to_the_bound() {
        let (tx, mut rx) = mpsc::channel(8);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![3, 4]));
        // Waits for the next item rather than returning an empty batch.
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(5).await.unwrap();
        });
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![5]));
        sender.await.unwrap();
        // Every sender gone and nothing queued: the end.
        assert_eq!(next_batch(&mut rx, 3).await, None);
    }
}
