//! Live refresh: the newest version of every warehouse table, watched by one task while any page
//! listens, and sent to pages as server-sent events. A page knows the version each panel was
//! drawn from (the panel's `X-Sokana-Tables` header), so it redraws exactly the panels whose
//! tables moved on, whoever made the commit (a pipeline run in this server or another process,
//! a model build, an erasure).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::query::engine::QueryEngine;
use crate::warehouse::TableName;

/// How often the versions are read while someone listens. A local table's check is a `stat` of
/// its log directory; an object store's is a listing, so this bounds the cost of a page left open.
const POLL: Duration = Duration::from_secs(1);

pub type Versions = Arc<BTreeMap<TableName, i64>>;

/// The table versions, kept up to date while anyone is subscribed.
pub struct TableWatch {
    sender: Arc<watch::Sender<Versions>>,
}

impl TableWatch {
    /// Starts the watching task; it ends when the watch is dropped.
    pub fn start(engine: &Arc<QueryEngine>) -> TableWatch {
        let sender = Arc::new(watch::Sender::new(Versions::default()));
        tokio::spawn(watch_versions(Arc::downgrade(engine), Arc::downgrade(&sender)));
        TableWatch { sender }
    }

    pub fn subscribe(&self) -> watch::Receiver<Versions> {
        self.sender.subscribe()
    }
}

async fn watch_versions(engine: Weak<QueryEngine>, sender: Weak<watch::Sender<Versions>>) {
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let (Some(engine), Some(sender)) = (engine.upgrade(), sender.upgrade()) else { return };
        if sender.receiver_count() == 0 {
            continue;
        }
        let catalog = engine.catalog();
        if let Err(e) = catalog.refresh_names().await {
            tracing::warn!(error = %e, "live refresh could not list the warehouse");
            continue;
        }
        let names = catalog.names();
        match catalog.versions(&names).await {
            Ok(versions) => {
                let now: BTreeMap<TableName, i64> =
                    names.into_iter().zip(versions).filter_map(|(name, v)| v.map(|v| (name, v))).collect();
                sender.send_if_modified(|current| {
                    let changed = **current != now;
                    if changed {
                        *current = Arc::new(now);
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "live refresh could not read the table versions"),
        }
    }
}

/// The events of one page: first every table's version, then each change, as `versions` events
/// whose data is `{"marts.fct_payments": 12, …}`; only tables `visible` admits.
pub fn events(
    receiver: watch::Receiver<Versions>,
    visible: impl Fn(&TableName) -> bool + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut seen: Versions = Versions::default();
    let stream = tokio_stream::wrappers::WatchStream::new(receiver).filter_map(move |now| {
        let changed: BTreeMap<String, i64> = now
            .iter()
            .filter(|(name, version)| visible(name) && seen.get(*name) != Some(*version))
            .map(|(name, version)| (name.to_string(), *version))
            .collect();
        seen = now;
        let event =
            (!changed.is_empty()).then(|| Event::default().event("versions").json_data(&changed).ok()).flatten();
        futures::future::ready(event.map(Ok))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
