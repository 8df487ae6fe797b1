//! The reconcile loop for one `[[reconcile]]` entry: ask the server for its
//! list at start-up and then every interval, and release the seats of the
//! sessions it no longer has. A failed round releases nothing; failures are
//! logged when they start or change, not every round.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::fetch::{self, FetchError};
use super::Listing;
use crate::admission::protocol::ServerKind;
use crate::admission::table::ServerId;
use crate::config::{Reconcile, Source};
use crate::sys;

/// What reconciliation needs of the gateway's session table.
pub trait Sessions: Send + Sync + 'static {
    /// The VPN server processes sessions live in.
    fn servers(&self) -> Vec<ServerId>;
    /// Releases the sessions `listing` shows are gone (see
    /// `Listing::is_stale`), and takes note of how many sessions it lists
    /// that the table does not know; returns how many were released.
    fn release_stale(&self, listing: &Listing, grace: std::time::Duration, source: &str) -> usize;
    /// A round finished (whatever its outcome): status counts them, so a
    /// waiter can tell that the daemon looked.
    fn round_done(&self);
}

pub async fn run<S: Sessions>(sessions: Arc<S>, entry: Reconcile, cancel: CancellationToken) {
    let source = entry.source.describe();
    let mut tick = tokio::time::interval(entry.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        let round = match cancel.run_until_cancelled(once(&*sessions, &entry)).await {
            Some(r) => r,
            None => return,
        };
        sessions.round_done();
        match round {
            Ok((listed, released)) => {
                if failing.take().is_some() {
                    tracing::info!(%source, listed, "VPN server answers again; reconciling");
                }
                tracing::debug!(%source, listed, released, "reconciled");
            }
            Err(e) => {
                let message = e.to_string();
                if failing.as_deref() != Some(&message) {
                    tracing::warn!(%source, "cannot reconcile: {message}");
                    failing = Some(message);
                }
            }
        }
    }
}

/// One round: returns how many sessions the server listed and how many
/// seats were released.
pub async fn once(
    sessions: &impl Sessions,
    entry: &Reconcile,
) -> Result<(usize, usize), FetchError> {
    let listing = match &entry.source {
        Source::Openvpn { management } => {
            let a = fetch::openvpn(management, entry.timeout).await?;
            Listing::openvpn(a.pid, a.clients, a.requested_at)
        }
        Source::Ocserv { occtl, socket } => {
            let a = fetch::ocserv(occtl, socket.as_deref(), entry.timeout).await?;
            // Only the workers this ocserv forked: another instance's
            // sessions are not in its list. Read /proc outside the lock.
            let servers = sessions.servers();
            let workers: HashSet<u32> = servers
                .iter()
                .filter(|s| s.kind == ServerKind::Ocserv)
                .filter(|s| {
                    // occtl names the main process as ocserv sees itself.
                    let parent = sys::process::parent_pid(s.pid).and_then(sys::process::read);
                    parent.is_some_and(|p| p.own_pid() == a.server_pid)
                })
                .map(|s| s.pid)
                .collect();
            Listing::ocserv(workers, a.users, a.requested_at)
        }
    };
    let released = sessions.release_stale(&listing, entry.grace, &entry.source.describe());
    Ok((listing.len(), released))
}
