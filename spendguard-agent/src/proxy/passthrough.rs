//! Byte-for-byte relay to the original destination: never decrypted, never altered. `already_read`
//! are bytes the router peeked (e.g. a ClientHello); they are replayed first.

use tokio::io::AsyncWriteExt as _;

use super::{upstream, Inbound};

pub async fn splice(mut inbound: Inbound, already_read: &[u8]) -> std::io::Result<(u64, u64)> {
    let mut up = upstream::connect(inbound.orig_dst).await?;
    if !already_read.is_empty() {
        up.write_all(already_read).await?;
    }
    let (a, b) = tokio::io::copy_bidirectional(&mut inbound.stream, &mut up).await?;
    Ok((a + already_read.len() as u64, b))
}
