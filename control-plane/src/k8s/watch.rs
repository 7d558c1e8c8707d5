//! One kube-runtime watcher per watched kind, merged into one stream of
//! `(kind, event)` for the source's single writer. A watch that fails is retried
//! by the watcher with kube's default backoff (resuming from its last
//! resourceVersion, or relisting when the server says it is too old); failures
//! are logged, never fatal.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;

pub type KindEvent = (Arc<ApiResource>, watcher::Event<DynamicObject>);

/// Events of every kind in `kinds`, in the order they arrive.
pub fn events(client: kube::Client, kinds: &[ApiResource]) -> impl Stream<Item = KindEvent> + Send {
    let streams = kinds.iter().map(|kind| {
        let kind = Arc::new(kind.clone());
        let api: Api<DynamicObject> = Api::all_with(client.clone(), kind.as_ref());
        watcher(api, watcher::Config::default())
            .default_backoff()
            .filter_map(move |event| {
                let kind = kind.clone();
                async move {
                    match event {
                        Ok(event) => Some((kind, event)),
                        Err(e) => {
                            eprintln!(
                                "warning: watching {} {}: {e} (retrying)",
                                kind.api_version, kind.plural
                            );
                            None
                        }
                    }
                }
            })
            .boxed()
    });
    futures::stream::select_all(streams)
}
