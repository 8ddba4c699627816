//! The sign stage: the UKI of the stage before it, signed for Secure Boot.
//!
//! Inputs: `uki` (the unsigned UKI, a blob), `SecureBootCertificate` (the certificate file,
//! ingested into the store like any project file: it is public), `SecureBootKey` (what stands
//! for the key: the digest of its *public* key, see [`SigningPlan::key_identity`]), the signing
//! method and, when kiln signs, `SOURCE_DATE_EPOCH` (the signing time). A new key re-signs
//! without re-assembling the UKI; a rebuild whose UKI is unchanged signs nothing.
//!
//! The private key is read from the project when the stage runs, used, and dropped: its bytes
//! never enter the store, the build index, a log or a message. When `run` finds a different key
//! in the file than the one the stage was keyed with, it fails instead of signing with it.
//!
//! With `SecureBootSignTool=sbsign` or `systemd-sbsign` (keys in tokens), the tool runs through
//! [`Host::run_tool`]; its signature records the time it runs, so its output is not
//! reproducible (kiln's own is).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cache::{Digest, OutputKind, PutMode};
use kiln_engine::{Input, Stage, StageContext, StageError};
use kiln_recipe::{CertificateSource, KeySource, Recipe};

use super::check::{SigningMethod, SigningPlan, plan_signing};
use super::error::SignError;
use super::image::{Signer, sign_image};
use super::keys::{self, PrivateKey};
use crate::host::{Host, ToolInvocation};
use crate::pe::PeHeaders;

/// Signs the UKI the stage `uki` outputs.
#[derive(Clone)]
pub struct SignStage {
    /// The node's name, `sign` unless several images need one each.
    pub name: String,
    /// The stage whose output is the unsigned UKI.
    pub uki: String,
    pub plan: SigningPlan,
    /// The signature's signing time (seconds since 1970): `SourceDateEpoch=` when the recipe
    /// sets one; `None` records no time.
    pub signing_time: Option<u64>,
    pub host: Arc<dyn Host>,
}

impl std::fmt::Debug for SignStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignStage")
            .field("name", &self.name)
            .field("uki", &self.uki)
            .field("plan", &self.plan)
            .field("signing_time", &self.signing_time)
            .finish_non_exhaustive()
    }
}

impl SignStage {
    /// The sign stage of `recipe` after the stage `uki`, its settings checked
    /// ([`plan_signing`]); `None` when `SecureBoot=` is off.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # let recipe = kiln_recipe::Recipe::default();
    /// # let host: Arc<dyn kiln_stages::host::Host> = Arc::new(kiln_stages::host::RealHost::new());
    /// let mut stages: Vec<Box<dyn kiln_engine::Stage>> = Vec::new();
    /// if let Some(sign) = kiln_stages::sign::SignStage::for_recipe(&recipe, "project".as_ref(), "uki", host)? {
    ///     stages.push(Box::new(sign));
    /// }
    /// # Ok::<(), kiln_stages::sign::SignError>(())
    /// ```
    pub fn for_recipe(
        recipe: &Recipe,
        project_dir: &Path,
        uki: impl Into<String>,
        host: Arc<dyn Host>,
    ) -> Result<Option<SignStage>, SignError> {
        Ok(plan_signing(recipe, project_dir)?.map(|plan| SignStage {
            name: "sign".to_string(),
            uki: uki.into(),
            plan,
            signing_time: recipe.content.source_date_epoch,
            host,
        }))
    }

    /// Signs `input` into `output`, reading the key from `project_dir` (or the tool does).
    pub fn sign(
        &self,
        project_dir: &Path,
        input: &Path,
        certificate: &Path,
        output: &Path,
        log: &dyn kiln_engine::StageLog,
    ) -> Result<(), SignError> {
        match &self.plan.method {
            SigningMethod::Kiln => {
                let key_path = project_dir.join(&self.plan.key);
                let key = PrivateKey::read(&key_path, &self.plan.key)?;
                if key.identity() != self.plan.key_identity {
                    return Err(SignError::KeyChanged {
                        path: self.plan.key.clone(),
                    });
                }
                let certificate = keys::read_certificate(certificate, &self.plan.certificate)?;
                let signer = Signer {
                    key,
                    certificate,
                    key_name: self.plan.key.clone(),
                };
                let signed = sign_image(input, output, &signer, self.signing_time)?;
                log.note(&format!(
                    "signed by {} (image digest sha256:{})",
                    keys::subject(&signer.certificate),
                    hex(&signed.digest)
                ));
                Ok(())
            }
            SigningMethod::Sbsign(program) | SigningMethod::SystemdSbsign(program) => {
                let invocation =
                    self.tool_invocation(program, project_dir, input, certificate, output);
                let outcome = self
                    .host
                    .run_tool(&invocation, &mut |line| log.line(line))?;
                if !outcome.success() {
                    return Err(SignError::ToolFailed {
                        command: invocation.shown(),
                        code: outcome.code,
                        output: outcome.output_tail,
                    });
                }
                let signed = std::fs::File::open(output)
                    .ok()
                    .and_then(|mut file| PeHeaders::read(&mut file).ok())
                    .is_some_and(|headers| headers.certificate_table().is_some());
                if !signed {
                    return Err(SignError::ToolWroteNoSignature {
                        command: invocation.shown(),
                    });
                }
                Ok(())
            }
        }
    }

    /// The command line of the signing tool, as mkosi runs it.
    pub fn tool_invocation(
        &self,
        program: &Path,
        project_dir: &Path,
        input: &Path,
        certificate: &Path,
        output: &Path,
    ) -> ToolInvocation {
        let plan = &self.plan;
        let key_file = project_dir.join(&plan.key);
        // A key that is a file is passed by its path; anything else as written.
        let key = if key_file.is_file() {
            key_file
        } else {
            plan.key.clone()
        };
        let certificate = match plan.certificate_source {
            CertificateSource::File => certificate.to_path_buf(),
            CertificateSource::Provider(_) => plan.certificate.clone(),
        };
        let path = |path: &Path| path.display().to_string();
        match plan.method {
            SigningMethod::SystemdSbsign(_) => {
                let mut invocation = ToolInvocation::new(program).arg("sign");
                if plan.key_source != KeySource::File {
                    invocation = invocation
                        .arg("--private-key-source")
                        .arg(plan.key_source.to_mkosi());
                }
                invocation = invocation.arg("--private-key").arg(path(&key));
                if plan.certificate_source != CertificateSource::File {
                    invocation = invocation
                        .arg("--certificate-source")
                        .arg(plan.certificate_source.to_mkosi());
                }
                invocation
                    .arg("--certificate")
                    .arg(path(&certificate))
                    .arg("--output")
                    .arg(path(output))
                    .arg(path(input))
            }
            _ => {
                let mut invocation = ToolInvocation::new(program);
                if let KeySource::Engine(engine) = &plan.key_source {
                    invocation = invocation.arg("--engine").arg(engine.clone());
                }
                invocation
                    .arg("--key")
                    .arg(path(&key))
                    .arg("--cert")
                    .arg(path(&certificate))
                    .arg("--output")
                    .arg(path(output))
                    .arg(path(input))
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl Stage for SignStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "sign"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        let plan = &self.plan;
        let mut inputs = vec![
            Input::stage("uki", &self.uki),
            Input::value("SecureBootKey", &plan.key_identity),
            Input::value("SecureBootSignTool", plan.method.name()),
        ];
        if plan.certificate_is_file() {
            inputs.push(Input::file("SecureBootCertificate", &plan.certificate));
        } else {
            inputs.push(Input::value(
                "SecureBootCertificate",
                plan.certificate.display().to_string(),
            ));
            inputs.push(Input::value(
                "SecureBootCertificateSource",
                plan.certificate_source.to_mkosi(),
            ));
        }
        if !plan.key_is_file() {
            inputs.push(Input::value(
                "SecureBootKeySource",
                plan.key_source.to_mkosi(),
            ));
        }
        if plan.method == SigningMethod::Kiln
            && let Some(epoch) = self.signing_time
        {
            inputs.push(Input::value("SOURCE_DATE_EPOCH", epoch.to_string()));
        }
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Blob
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let uki = ctx.store.blob_path(&ctx.input("uki")?)?;
        let certificate: PathBuf = if self.plan.certificate_is_file() {
            ctx.store.blob_path(&ctx.input("SecureBootCertificate")?)?
        } else {
            self.plan.certificate.clone()
        };
        let output = ctx.scratch.join("signed.efi");
        self.sign(ctx.project_dir, &uki, &certificate, &output, ctx.log)
            .map_err(StageError::failed)?;
        Ok(ctx.store.put_file(&output, PutMode::Move)?)
    }
}
