//! Fan-out of [`Notification`]s to subscribers over bounded queues. Sending never blocks the
//! committer: a full queue loses the notification, with a warning.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::types::Notification;

#[derive(Debug)]
pub(crate) struct Notifier {
    subscribers: Mutex<Vec<mpsc::Sender<Notification>>>,
    capacity: usize,
}

impl Notifier {
    pub fn new(capacity: usize) -> Notifier {
        Notifier {
            subscribers: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn subscribe(&self) -> mpsc::Receiver<Notification> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    pub fn send(&self, notifications: Vec<Notification>) {
        if notifications.is_empty() {
            return;
        }
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for n in notifications {
            tracing::info!(notification = ?n, "budget notification");
            subs.retain(|s| match s.try_send(n.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(n)) => {
                    tracing::warn!(notification = ?n, "notification queue full; notification dropped (is the webhook notifier keeping up?)");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }
}
