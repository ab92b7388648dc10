// SPDX-License-Identifier: Apache-2.0
//! `hearth sandbox create|ls|exec|shell|kill` against a running `hearth serve`.

use crate::cli::{SandboxArgs, SandboxOp};
use anyhow::Context;
use hearth_client::{Api, Created, ProcessEvent};
use std::io::Write;

fn api_key(args: &SandboxArgs) -> anyhow::Result<String> {
    if let Some(k) = &args.api_key {
        return Ok(k.clone());
    }
    let path = args.home.join("api-key");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("no API key: pass --api-key, set E2B_API_KEY, or run as the server's user so {} is readable", path.display()))
}

async fn created(api: &Api, id: &str) -> anyhow::Result<Created> {
    let detail = api
        .get(id)
        .await?
        .with_context(|| format!("sandbox {id} not found"))?;
    Ok(Created {
        sandbox_id: id.to_owned(),
        envd_access_token: detail["envdAccessToken"].as_str().map(str::to_owned),
        template_id: detail["templateID"].as_str().unwrap_or_default().to_owned(),
    })
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let api = Api::new(args.api_url.clone(), api_key(&args)?);
    match args.op {
        SandboxOp::Create { template, timeout } => {
            let s = api.create(&template, timeout).await?;
            println!("{}", s.sandbox_id);
        }
        SandboxOp::Ls => {
            let items = api.list().await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<24} {:<12} {:<9} {:<26} END",
                "SANDBOX", "TEMPLATE", "STATE", "STARTED"
            )?;
            for s in items {
                writeln!(
                    out,
                    "{:<24} {:<12} {:<9} {:<26} {}",
                    s["sandboxID"].as_str().unwrap_or_default(),
                    s["alias"]
                        .as_str()
                        .or(s["templateID"].as_str())
                        .unwrap_or_default(),
                    s["state"].as_str().unwrap_or_default(),
                    s["startedAt"].as_str().unwrap_or_default(),
                    s["endAt"].as_str().unwrap_or_default(),
                )?;
            }
        }
        SandboxOp::Kill { ids } => {
            for id in ids {
                if api.kill(&id).await? {
                    eprintln!("killed {id}");
                } else {
                    anyhow::bail!("sandbox {id} not found");
                }
            }
        }
        SandboxOp::Exec { id, user, command } => {
            let sbx = created(&api, &id).await?;
            let mut envd = api.envd(&sbx);
            if let Some(u) = &user {
                envd = envd.as_user(u);
            }
            let line = shell_join(&command);
            let mut stream = envd
                .start(serde_json::json!({
                    "process": {"cmd": "/bin/bash", "args": ["-l", "-c", line]},
                    "stdin": false
                }))
                .await?;
            let mut code = 0;
            while let Some(ev) = stream.next().await? {
                match ev {
                    ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => {
                        std::io::stdout().write_all(&b)?;
                        std::io::stdout().flush()?;
                    }
                    ProcessEvent::Stderr(b) => std::io::stderr().write_all(&b)?,
                    ProcessEvent::End { exit_code, .. } => code = exit_code,
                    _ => {}
                }
            }
            if code != 0 {
                std::process::exit(code.clamp(1, 255));
            }
        }
        SandboxOp::Shell { id, user } => {
            let sbx = created(&api, &id).await?;
            let mut envd = api.envd(&sbx);
            if let Some(u) = &user {
                envd = envd.as_user(u);
            }
            let code = crate::commands::shell::run(envd).await?;
            std::process::exit(code);
        }
    }
    Ok(())
}

/// Joins argv into one shell line, quoting what needs it.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_join_quotes_only_when_needed() {
        let argv: Vec<String> = ["echo", "a b", "it's", "$HOME"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_join(&argv), r"echo 'a b' 'it'\''s' '$HOME'");
    }
}
