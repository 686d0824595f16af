//! placeholder: the stdout sink.
use serde::Deserialize;
use crate::config::Problems;
use crate::event::Event;
use super::DeliveryError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}
impl StdoutConfig { pub fn validate(&self, _key: &str, _problems: &mut Problems) {} }
pub struct StdoutSink;
impl StdoutSink {
    pub fn new(_config: &StdoutConfig) -> Self { StdoutSink }
    pub async fn deliver(&mut self, _event: &Event) -> Result<(), DeliveryError> { todo!() }
    pub async fn flush(&mut self) -> Result<(), DeliveryError> { todo!() }
}
