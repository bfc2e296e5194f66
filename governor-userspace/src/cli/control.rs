//! `governor pause|resume|kill|ack`: one request to the daemon, which answers once the kernel
//! enforces the change and the audit record is on disk.

use std::path::Path;

use serde_json::json;

use crate::control::Client;

pub async fn run(
    action: &str,
    agent: Option<&str>,
    reason: Option<&str>,
    note: Option<&str>,
    socket: &Path,
) -> anyhow::Result<()> {
    let path = match agent {
        Some(a) => format!("/v1/agents/{a}/{action}"),
        None => format!("/v1/{action}"),
    };
    let answer = Client::new(socket).post_json(&path, &json!({ "reason": reason, "note": note })).await?;
    for a in answer["agents"].as_array().into_iter().flatten() {
        let name = a["agent"].as_str().unwrap_or("?");
        match action {
            "pause" => println!("{name}: paused (connects refused, traffic dropped)"),
            "resume" => println!("{name}: resumed"),
            "resume-budget" => println!("{name}: budget suspension lifted until the window rolls or the limit changes"),
            "ack" => println!("{name}: checkpoint acknowledged, resumed"),
            "kill" => println!("{name}: paused and killed {} process(es)", a["result"]["processes"]),
            _ => println!("{name}: {action}"),
        }
    }
    if answer["agents"].as_array().is_none_or(Vec::is_empty) {
        println!("{}", if action == "resume" { "no agent was paused" } else { "no agents" });
    }
    Ok(())
}

/// `governor reload`.
pub async fn reload(socket: &Path) -> anyhow::Result<()> {
    let answer = Client::new(socket).post_json("/v1/reload", &json!({})).await?;
    println!("reloaded (sha256 {}); agents: {}", answer["sha256"].as_str().unwrap_or("?"), answer["agents"]);
    Ok(())
}
