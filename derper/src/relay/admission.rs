//! The admission step: what a connection that completed the handshake may do here.
//!
//! The mesh key decides whether the client is a mesh peer (a wrong key is refused), and the
//! PeerPresent flags are derived. Then client verification ([`crate::admission`]: a webhook
//! such as Headscale's `/verify` or the local tailscaled, behind a decision cache) decides
//! whether a regular client may join; mesh peers bypass it, as in derper.

use derp_proto::MeshKey;
use derp_proto::frame::PeerPresentFlags;
use derp_proto::handshake::ClientHello;

use super::{AcceptError, ConnMeta};
use crate::admission::{Admission, Verdict};
use crate::metrics::{HandshakeFailure, Metrics};

/// What an admitted connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// Presented the region's mesh key: may watch connections, forward and close peers.
    pub(crate) is_mesh: bool,
    /// Flags announced to mesh watchers in PeerPresent.
    pub(crate) flags: PeerPresentFlags,
}

/// Decides whether `hello` may join, and as what. Counts a refusal.
pub(crate) fn admit(
    hello: &ClientHello,
    meta: &ConnMeta,
    mesh_key: Option<&MeshKey>,
    metrics: &Metrics,
) -> Result<Admitted, AcceptError> {
    // MeshKey's equality is constant-time.
    let is_mesh = match (&hello.info.mesh_key, mesh_key) {
        (None, _) => false,
        (Some(theirs), Some(ours)) if theirs == ours => true,
        (Some(_), _) => {
            metrics.handshake_failed(HandshakeFailure::MeshKey);
            return Err(AcceptError::MeshKey);
        }
    };
    let mut flags = PeerPresentFlags::default();
    if is_mesh {
        flags = flags | PeerPresentFlags::IS_MESH_PEER;
    }
    if hello.info.is_prober {
        flags = flags | PeerPresentFlags::IS_PROBER;
    }
    if meta.not_ideal {
        flags = flags | PeerPresentFlags::NOT_IDEAL;
    }
    if flags == PeerPresentFlags::default() {
        flags = PeerPresentFlags::IS_REGULAR;
    }
    Ok(Admitted { is_mesh, flags })
}

/// Asks admission whether a regular client may join (mesh peers bypass it). Counts and logs a
/// refusal (rate-limited: a refused key reconnecting in a loop must not flood the log).
pub(crate) async fn verify(
    admission: &Admission,
    hello: &ClientHello,
    meta: &ConnMeta,
    admitted: Admitted,
    metrics: &Metrics,
) -> Result<(), AcceptError> {
    if admitted.is_mesh {
        admission.note_mesh_bypass();
        return Ok(());
    }
    match admission.check(&hello.client_key, meta.remote.ip()).await {
        Verdict::Admit => Ok(()),
        Verdict::Refuse(why) => {
            metrics.handshake_failed(HandshakeFailure::NotAdmitted);
            if let Some(suppressed) = crate::log_limit::ADMISSION.allow() {
                tracing::info!(remote = %meta.remote, reason = %why, suppressed, "refusing connection");
            }
            Err(AcceptError::NotAdmitted(why))
        }
    }
}
