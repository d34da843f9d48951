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

    /// The message's name (its variant), as the console lists the messages an entity handled.
    fn label(&self) -> &'static str;
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

/// The responder of a one-way message: there is no answer to pass on.
pub fn no_answer() -> Responder {
    Box::new(|_: &[u8]| {})
}

/// The answer of a one-way message rebuilt on its owner: delivered, nothing to say.
pub fn answered() -> Answer {
    Box::pin(async { Some(Vec::new()) })
}

/// Declares an entity kind's messages once. From one declaration it writes the message enum
/// (an `ask` variant gets a last field `reply: RpcReplyPort<T>` for its answer `T`), the
/// serialisable request enum of every message that may cross nodes, and the [`Forwardable`]
/// impl that turns one into the other and back. The caller's crate needs `ractor` and `serde`.
///
/// ```
/// use convene_cluster::wire::Forwardable;
///
/// convene_cluster::entity_messages! {
///     /// Messages a counter takes.
///     pub enum CounterMessage via CounterRequest {
///         ask {
///             /// Adds `n`; answers the new total.
///             Add { n: i64 } -> i64,
///         }
///         tell {
///             /// Back to zero.
///             Reset,
///         }
///         local {
///             /// Idle check (a timer of the actor's own).
///             Tick,
///         }
///     }
/// }
///
/// let (tx, _rx) = tokio::sync::oneshot::channel();
/// let (bytes, _responder) = CounterMessage::Add { n: 2, reply: tx.into() }
///     .into_wire()
///     .ok()
///     .unwrap();
/// let (rebuilt, _answer) = CounterMessage::from_wire(&bytes).unwrap();
/// assert!(matches!(rebuilt, CounterMessage::Add { n: 2, .. }));
/// assert!(CounterMessage::Reset.into_wire().is_ok());
/// assert!(CounterMessage::Tick.into_wire().is_err());
/// assert_eq!(CounterMessage::Tick.label(), "Tick");
/// ```
///
/// `tell` messages are forwarded without an answer; `local` ones never leave their node (timers,
/// messages an actor sends itself), and a route that would forward one refuses it.
#[macro_export]
macro_rules! entity_messages {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Msg:ident via $Req:ident {
            ask {
                $(
                    $(#[$ameta:meta])*
                    $AVar:ident { $( $(#[$afmeta:meta])* $afield:ident : $afty:ty ),* $(,)? } -> $aty:ty
                ),* $(,)?
            }
            tell {
                $(
                    $(#[$tmeta:meta])*
                    $TVar:ident $({ $( $(#[$tfmeta:meta])* $tfield:ident : $tfty:ty ),* $(,)? })?
                ),* $(,)?
            }
            local {
                $(
                    $(#[$lmeta:meta])*
                    $LVar:ident $({ $( $(#[$lfmeta:meta])* $lfield:ident : $lfty:ty ),* $(,)? })?
                ),* $(,)?
            }
        }
    ) => {
        $(#[$meta])*
        $vis enum $Msg {
            $(
                $(#[$ameta])*
                $AVar {
                    $( $(#[$afmeta])* $afield: $afty, )*
                    /// Where the answer goes.
                    reply: ::ractor::RpcReplyPort<$aty>,
                },
            )*
            $(
                $(#[$tmeta])*
                $TVar $({ $( $(#[$tfmeta])* $tfield: $tfty, )* })?,
            )*
            $(
                $(#[$lmeta])*
                $LVar $({ $( $(#[$lfmeta])* $lfield: $lfty, )* })?,
            )*
        }

        impl ::ractor::Message for $Msg {}

        /// The wire form of the messages that may be forwarded to an owner on another node.
        #[derive(::serde::Serialize, ::serde::Deserialize)]
        enum $Req {
            $( $AVar { $( $afield: $afty, )* }, )*
            $( $TVar $({ $( $tfield: $tfty, )* })?, )*
        }

        impl $crate::wire::Forwardable for $Msg {
            fn into_wire(self) -> Result<(Vec<u8>, $crate::wire::Responder), Self> {
                let (request, responder) = match self {
                    $(
                        Self::$AVar { $( $afield, )* reply } => (
                            $Req::$AVar { $( $afield, )* },
                            $crate::wire::respond(reply),
                        ),
                    )*
                    $(
                        Self::$TVar $({ $( $tfield, )* })? => (
                            $Req::$TVar $({ $( $tfield, )* })?,
                            $crate::wire::no_answer(),
                        ),
                    )*
                    $( local @ Self::$LVar { .. } => return Err(local), )*
                };
                Ok(($crate::wire::encode(&request), responder))
            }

            fn from_wire(
                body: &[u8],
            ) -> Result<(Self, $crate::wire::Answer), $crate::wire::WireError> {
                Ok(match $crate::wire::decode::<$Req>(body)? {
                    $(
                        $Req::$AVar { $( $afield, )* } => {
                            let (reply, answer) = $crate::wire::answer();
                            (Self::$AVar { $( $afield, )* reply }, answer)
                        }
                    )*
                    $(
                        $Req::$TVar $({ $( $tfield, )* })? => (
                            Self::$TVar $({ $( $tfield, )* })?,
                            $crate::wire::answered(),
                        ),
                    )*
                })
            }

            fn label(&self) -> &'static str {
                match self {
                    $( Self::$AVar { .. } => stringify!($AVar), )*
                    $( Self::$TVar { .. } => stringify!($TVar), )*
                    $( Self::$LVar { .. } => stringify!($LVar), )*
                }
            }
        }
    };
}
