//! placeholder: the webhook sink.
use serde::Deserialize;
use crate::config::Problems;
use crate::event::Event;
use super::DeliveryError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {}
impl WebhookConfig { pub fn validate(&self, _key: &str, _problems: &mut Problems) {} }
pub struct WebhookSink;
impl WebhookSink {
    pub fn new(_config: &WebhookConfig) -> Result<Self, DeliveryError> { todo!() }
    pub async fn deliver(&mut self, _event: &Event) -> Result<(), DeliveryError> { todo!() }
    pub fn retry_backoff(&self) -> crate::backoff::Backoff { todo!() }
}
impl WebhookConfig { pub fn has_inline_secret(&self) -> bool { false } }
