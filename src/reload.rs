//! Applying a new configuration on SIGHUP: topic filters and sinks change
//! in place; other settings need a restart.
//!
//! Every sink is rebuilt on a reload. A sink's position lives in its outbox
//! cursor, so stopping its task and starting a new one loses nothing: the
//! new task resumes after the last event the old one delivered.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::outbox::{Outbox, OutboxError};
use crate::sink::driver::{self, SinkStats, Stop};
use crate::sink::{Sink, SinkSpec};
use crate::topic::TopicFilter;

/// Reads the configuration again from where it came from.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The counters of the sinks running now, by name.
pub type SharedStats = Arc<Mutex<Vec<(String, Arc<SinkStats>)>>>;

struct RunningSink {
    hard: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The running sink tasks.
pub struct SinkSet {
    outbox: Outbox,
    tracker: TaskTracker,
    stop: Stop,
    running: Vec<RunningSink>,
    stats: SharedStats,
}

impl SinkSet {
    pub fn new(outbox: Outbox, tracker: TaskTracker, stop: Stop) -> SinkSet {
        SinkSet { outbox, tracker, stop, running: Vec::new(), stats: Arc::default() }
    }

    pub fn stats(&self) -> SharedStats {
        self.stats.clone()
    }

    /// Starts a task delivering the outbox to `sink` from its cursor.
    pub fn start(&mut self, spec: SinkSpec, sink: Sink) -> Result<(), OutboxError> {
        let reader = self.outbox.reader(&spec.name)?;
        let stats = Arc::new(SinkStats::default());
        let span = tracing::info_span!("sink", sink = %spec.name);
        span.in_scope(|| {
            tracing::info!(kind = spec.config.type_name(), resume_after = reader.delivered(), "sink started")
        });
        let hard = self.stop.hard.child_token();
        let stop = Stop { draining: self.stop.draining.clone(), hard: hard.clone() };
        self.lock_stats().push((spec.name.clone(), stats.clone()));
        let task =
            self.tracker.spawn(driver::drive(spec, sink, reader, self.outbox.head(), stats, stop).instrument(span));
        self.running.push(RunningSink { hard, task });
        Ok(())
    }

    /// Stops every sink task and waits for it; each saves its cursor first.
    async fn stop_all(&mut self) {
        for sink in &self.running {
            sink.hard.cancel();
        }
        for sink in self.running.drain(..) {
            let _ = sink.task.await;
        }
        self.lock_stats().clear();
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<SinkStats>)>> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Applies reload requests until shutdown.
pub struct Reloader {
    pub loader: Option<Loader>,
    pub current: Config,
    pub sinks: SinkSet,
    pub topics: mpsc::UnboundedSender<Vec<TopicFilter>>,
}

impl Reloader {
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<()>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                request = requests.recv() => if request.is_none() { return },
            }
            self.reload().await;
        }
    }

    async fn reload(&mut self) {
        let Some(loader) = &self.loader else {
            tracing::warn!("configuration reload is not available in this mode");
            return;
        };
        let new = match loader() {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%error, "configuration reload rejected, keeping the running configuration");
                return;
            }
        };

        // Sinks are built before anything stops, so that a sink that
        // cannot start (a missing directory, say) rejects the whole reload.
        let mut built = Vec::new();
        for spec in &new.sinks {
            match Sink::build(&spec.config).await {
                Ok(sink) => built.push((spec.clone(), sink)),
                Err(error) => {
                    tracing::error!(sink = %spec.name, %error, "configuration reload rejected, keeping the running configuration");
                    return;
                }
            }
        }

        for section in restart_only_changes(&self.current, &new) {
            tracing::warn!(section, "setting changed, restart flupd to apply it; the running value stays");
        }

        self.sinks.stop_all().await;
        let names: Vec<String> = new.sinks.iter().map(|spec| spec.name.clone()).collect();
        match self.sinks.outbox.forget_other_sinks(&names) {
            Ok(removed) => {
                for name in removed {
                    tracing::info!(sink = %name, "sink removed");
                }
            }
            Err(error) => tracing::error!(%error, "outbox cursors of removed sinks not deleted"),
        }
        for (spec, sink) in built {
            let name = spec.name.clone();
            if let Err(error) = self.sinks.start(spec, sink) {
                tracing::error!(sink = %name, %error, "sink not restarted after reload, its events wait in the outbox");
            }
        }

        if new.mqtt.topics != self.current.mqtt.topics {
            let _ = self.topics.send(new.mqtt.topics.clone());
            self.current.mqtt.topics = new.mqtt.topics;
        }
        self.current.sinks = new.sinks;
        tracing::info!(sinks = names.len(), topics = self.current.mqtt.topics.len(), "configuration reloaded");
    }
}

/// Names the sections whose change only a restart applies. Sections are
/// compared by their `Debug` form, in which secrets are redacted, so a
/// changed secret alone is not noticed.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let without_topics = |config: &Config| {
        let mut mqtt = config.mqtt.clone();
        mqtt.topics.clear();
        format!("{mqtt:?}")
    };
    let pairs = [
        ("lufthansa", format!("{:?}", old.lufthansa), format!("{:?}", new.lufthansa)),
        ("mqtt", without_topics(old), without_topics(new)),
        ("state", format!("{:?}", old.state), format!("{:?}", new.state)),
        ("outbox", format!("{:?}", old.outbox), format!("{:?}", new.outbox)),
        ("health", format!("{:?}", old.health), format!("{:?}", new.health)),
        ("enrich", format!("{:?}", old.enrich), format!("{:?}", new.enrich)),
        ("log", format!("{:?}", old.log), format!("{:?}", new.log)),
        ("shutdown_timeout", format!("{:?}", old.shutdown_timeout), format!("{:?}", new.shutdown_timeout)),
    ];
    pairs.into_iter().filter(|(_, old, new)| old != new).map(|(section, _, _)| section).collect()
}
