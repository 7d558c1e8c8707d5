//! What the control plane knows of its proxies (connected, version acked, last
//! nack, certificate expiry) and of its sources (current version, problems),
//! written as JSON to a status file after every change, for `palisade status`
//! and for tests that measure how fast a change is acked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServeStatus {
    pub version: u64,
    /// When the current version was made (ms since the epoch).
    pub version_made_at_ms: u64,
    /// Problems of the current manifests (file, object, field).
    pub problems: Vec<String>,
    pub proxies: BTreeMap<String, ProxyStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub identity: String,
    pub connected: bool,
    /// Open streams: a proxy that reconnects before its old stream is noticed
    /// dead has two for a while.
    pub streams: u32,
    pub acked_version: u64,
    pub acked_at_ms: u64,
    /// The last rejection, until a later ack.
    pub nack: Option<String>,
    /// Certificates issued to this pod so far (first one and renewals).
    pub certificates_issued: u64,
    pub certificate_not_after: Option<String>,
}

/// The status and where it is written. A lock is fine here: this is the control
/// plane's bookkeeping, not a proxy's data path.
#[derive(Debug)]
pub struct StatusBoard {
    file: Option<PathBuf>,
    status: Mutex<ServeStatus>,
}

impl StatusBoard {
    pub fn new(file: Option<PathBuf>) -> StatusBoard {
        StatusBoard {
            file,
            status: Mutex::new(ServeStatus::default()),
        }
    }

    pub fn update(&self, edit: impl FnOnce(&mut ServeStatus)) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        edit(&mut status);
        if let Some(file) = &self.file {
            let tmp = file.with_extension("tmp");
            let written = serde_json::to_vec_pretty(&*status)
                .map_err(std::io::Error::other)
                .and_then(|json| std::fs::write(&tmp, json))
                .and_then(|()| std::fs::rename(&tmp, file));
            if let Err(e) = written {
                eprintln!("warning: {}: {e}", file.display());
            }
        }
    }

    pub fn proxy(&self, pod: &str, edit: impl FnOnce(&mut ProxyStatus)) {
        self.update(|s| edit(s.proxies.entry(pod.to_owned()).or_default()));
    }
}
