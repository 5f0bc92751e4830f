//! What runs the generator, as settings: the backend (a tagged enum, one
//! variant per engine) and the device of the in-process one.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rag_core::{Error, Secret};

use crate::OpenAiConfig;

/// Where the in-process engine runs: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        match name.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::invalid(format!("unknown device {other:?}; use cpu, cuda or cuda:N"))
                }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// The candle device, or why there is none.
    pub fn open(self) -> Result<candle_core::Device, Error> {
        match self {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| {
                Error::unavailable(format!(
                    "no CUDA device {n} (is this binary built with `--features cuda`, and is a \
                     GPU with its driver present?)"
                ))
                .with_source(e)
            }),
        }
    }
}

/// The in-process candle engine.
#[derive(Debug, Clone, PartialEq)]
pub struct CandleSettings {
    /// A name from `rag models list`, or a path to a `.gguf` file or a
    /// folder of safetensors weights.
    pub model: String,
    pub device: Device,
    /// Answers decoded together (llama and qwen2 models), one token of
    /// each per pass over the weights; 1 answers one at a time.
    pub max_batch: usize,
    /// How a GGUF's weights are held on the CPU (llama and qwen2).
    pub precision: crate::Precision,
    /// Prompts start from the keys and values of the prompt before where
    /// they share their start (llama and qwen2; see
    /// [`crate::CandleGenerator::set_prefix_cache`]).
    pub prefix_cache: bool,
    /// Prompts on AMX tiles where the CPU has AMX-INT8 ([`crate::use_amx`]).
    pub amx: bool,
}

/// An OpenAI-compatible server: vLLM, TGI, Ollama's `/v1`, llama.cpp,
/// another `rag serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSettings {
    /// The server's base URL up to and including `/v1`.
    pub url: String,
    /// The model name the server knows.
    pub model: String,
    /// Sent as a bearer token when set.
    pub api_key: Secret,
    /// The served model's context window in tokens.
    pub context_window: usize,
    /// Longest wait for an answer to start, or between two pieces of a
    /// stream.
    pub timeout_s: u64,
    /// Retries on 429, 502, 503, 504 and connection failures.
    pub max_retries: u32,
}

impl OpenAiSettings {
    /// The client's configuration.
    pub fn config(&self) -> OpenAiConfig {
        let mut config = OpenAiConfig::new(&self.url, &self.model);
        config.api_key = self.api_key.get().map(str::to_string);
        config.context_window = self.context_window;
        config.timeout = Duration::from_secs(self.timeout_s.max(1));
        config.max_retries = self.max_retries;
        config
    }
}

/// What runs the generator.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Candle(CandleSettings),
    OpenAi(OpenAiSettings),
}

impl Backend {
    /// The model: a name or path for candle, the server's name for openai.
    pub fn model(&self) -> &str {
        match self {
            Backend::Candle(c) => &c.model,
            Backend::OpenAi(o) => &o.model,
        }
    }

    /// `candle` or `openai`, as the settings spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Candle(_) => "candle",
            Backend::OpenAi(_) => "openai",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:2", Device::Cuda(2)),
        ] {
            assert_eq!(text.parse::<Device>().unwrap(), device);
            assert_eq!(device.to_string(), text);
        }
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            let err = bad.parse::<Device>().unwrap_err();
            assert!(err.to_string().contains("cpu, cuda or cuda:N"), "{err}");
        }
    }
}
