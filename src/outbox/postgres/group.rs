//! Group commit for the outbox's hot writes on PostgreSQL.
//!
//! Every MLLP connection, gRPC call and submission attempt writes on its own; one
//! transaction each would cost the database a commit and several statements per result.
//! Instead the writes of one kind queue for a few lanes; a free lane takes everything
//! queued (up to a group's size) and hands it to its [`Work`], which stores the group in one
//! transaction of set-oriented statements. A group that fails is tried again item by item,
//! so one item that the database refuses never takes the others of its group with it.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::outbox::OutboxError;

/// One kind of grouped write.
#[async_trait::async_trait]
pub(super) trait Work: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;
    /// Writes `items` in one transaction; one output per item, in order.
    async fn run(&self, items: &[&Self::Item]) -> Result<Vec<Self::Output>, OutboxError>;
}

type Answer<W> = oneshot::Sender<Result<<W as Work>::Output, OutboxError>>;
type Queue<W> = mpsc::UnboundedReceiver<(<W as Work>::Item, Answer<W>)>;

/// The queue in front of the lanes. The lanes stop once it is dropped.
pub(super) struct Grouped<W: Work> {
    queue: mpsc::UnboundedSender<(W::Item, Answer<W>)>,
}

impl<W: Work> Grouped<W> {
    /// `lanes` groups may be written at once (one fills while another commits), each of
    /// at most `max` items.
    pub(super) fn start(work: W, lanes: usize, max: usize) -> Grouped<W> {
        let (queue, items) = mpsc::unbounded_channel();
        let items = Arc::new(Mutex::new(items));
        let work = Arc::new(work);
        for _ in 0..lanes {
            tokio::spawn(lane(work.clone(), items.clone(), max));
        }
        Grouped { queue }
    }

    pub(super) async fn write(&self, item: W::Item) -> Result<W::Output, OutboxError> {
        let (answer, outcome) = oneshot::channel();
        self.queue
            .send((item, answer))
            .map_err(|_| OutboxError::Closed)?;
        outcome.await.map_err(|_| OutboxError::Closed)?
    }
}

async fn lane<W: Work>(work: Arc<W>, items: Arc<Mutex<Queue<W>>>, max: usize) {
    loop {
        let mut group = Vec::new();
        {
            let mut items = items.lock().await;
            let Some(first) = items.recv().await else {
                return;
            };
            group.push(first);
            while group.len() < max {
                match items.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) => break,
                }
            }
        }
        let refs: Vec<&W::Item> = group.iter().map(|(item, _)| item).collect();
        match work.run(&refs).await {
            Ok(outputs) => {
                for ((_, answer), output) in group.into_iter().zip(outputs) {
                    let _ = answer.send(Ok(output));
                }
            }
            Err(e) if group.len() == 1 => {
                let (_, answer) = group.pop().expect("one item");
                let _ = answer.send(Err(e));
            }
            Err(_) => {
                for (item, answer) in group {
                    let output = work
                        .run(&[&item])
                        .await
                        .map(|mut o| o.pop().expect("one output"));
                    let _ = answer.send(output);
                }
            }
        }
    }
}
