//! Logs: tracing-subscriber, plain or JSON, with a filter that can be
//! changed while the proxy runs (`PUT /log-level`).

use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Reads and replaces the log filter at run time.
#[derive(Clone)]
pub(crate) struct LogControl {
    handle: Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
    current: Arc<Mutex<String>>,
}

impl LogControl {
    /// The filter in force.
    pub(crate) fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the filter; a filter that does not parse changes nothing.
    pub(crate) fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| format!("invalid filter: {e}"))?;
        if let Some(handle) = &self.handle {
            handle.reload(parsed).map_err(|e| e.to_string())?;
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = filter.to_owned();
        Ok(())
    }
}

/// Installs the global subscriber (once per process).
pub(crate) fn init(filter: &str, format: LogFormat) -> LogControl {
    let parsed = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(parsed);
    let registry = tracing_subscriber::registry().with(layer);
    let installed = match format {
        LogFormat::Plain => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    LogControl {
        handle: installed.is_ok().then_some(handle),
        current: Arc::new(Mutex::new(filter.to_owned())),
    }
}
