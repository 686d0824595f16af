//! placeholder: the file sink.
use serde::Deserialize;
use crate::config::Problems;
use crate::event::Event;
use super::DeliveryError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {}
impl FileConfig { pub fn validate(&self, _key: &str, _problems: &mut Problems) {} }
pub struct FileSink;
impl FileSink {
    pub async fn open(_config: &FileConfig) -> Result<Self, DeliveryError> { todo!() }
    pub async fn deliver(&mut self, _event: &Event) -> Result<(), DeliveryError> { todo!() }
    pub async fn flush(&mut self) -> Result<(), DeliveryError> { todo!() }
}
