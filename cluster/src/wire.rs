//! The wire form of entity messages: how a message whose owner is another node is split into a
//! serialisable request and the local reply port it answers, and rebuilt on the owner.

use std::future::Future;
use std::pin::Pin;

use ractor::{Message, RpcReplyPort};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// Completes the local caller's reply port with the owner's encoded answer.
pub type Responder = Box<dyn FnOnce(&[u8]) + Send>;

/// The owner's encoded answer to a rebuilt message; `None` when its reply port was dropped.
pub type Answer = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// A request that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable request: {0}")]
pub struct WireError(String);

impl WireError {
    /// A decoding failure described by `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// An entity message that may be sent to an owner on another node.
pub trait Forwardable: Message + Sized {
    /// Whether the keys of this kind are placed over the cluster's members. Kinds that are
    /// not placed live on the node that receives their messages.
    fn placed() -> bool {
        true
    }

    /// Splits the message into its request bytes and the reply port they answer, or gives it
    /// back when it cannot leave this node.
    fn into_wire(self) -> Result<(Vec<u8>, Responder), Self>;

    /// Rebuilds a message from its request bytes, with a fresh reply port whose answer the
    /// returned future encodes.
    fn from_wire(body: &[u8]) -> Result<(Self, Answer), WireError>;
}

/// Encodes a request.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a request.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError(e.to_string()))
}

/// A responder that decodes the answer and sends it on `port`. An answer that does not decode
/// drops the port, so the caller sees the entity as unavailable.
pub fn respond<T: DeserializeOwned + Send + 'static>(port: RpcReplyPort<T>) -> Responder {
    Box::new(move |bytes| match serde_json::from_slice::<T>(bytes) {
        Ok(answer) => {
            let _ = port.send(answer);
        }
        Err(e) => tracing::warn!(error = %e, "undecodable answer from the owner"),
    })
}

/// A fresh reply port and the future of its encoded answer.
pub fn answer<T: Serialize + Send + 'static>() -> (RpcReplyPort<T>, Answer) {
    let (tx, rx) = oneshot::channel::<T>();
    let fut = async move { rx.await.ok().map(|v| encode(&v)) };
    (RpcReplyPort::from(tx), Box::pin(fut))
}
