//! The fuzz targets' starting corpora, read from the repository: each target's seeds
//! (`fuzz/seeds/TARGET/*`), the wire-format fixtures (`fixtures/*.json`, and the records and
//! items inside them) and the README's configuration examples. `scripts/fuzz` writes them out
//! as the corpora (`fuzz_corpus` example); `tests/it/fuzz_corpora.rs` replays them.

use std::path::Path;

use serde_json::Value;

/// One input for one target.
#[derive(Debug, Clone)]
pub struct Input {
    pub target: &'static str,
    /// A file name for it in the corpus directory.
    pub name: String,
    pub data: Vec<u8>,
}

/// Every input under `root` (the repository), target by target.
pub fn corpus(root: &Path) -> std::io::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let mut put = |target: &'static str, name: String, data: Vec<u8>| inputs.push(Input { target, name, data });
    for (target, _) in super::TARGETS {
        let seeds = root.join("fuzz/seeds").join(target);
        if !seeds.is_dir() {
            continue;
        }
        for file in sorted(&seeds)? {
            let name = format!("seed-{}", file.file_name().unwrap_or_default().to_string_lossy());
            put(target, name, std::fs::read(&file)?);
        }
    }
    for file in sorted(&root.join("fixtures"))?.into_iter().filter(|f| f.extension().is_some_and(|e| e == "json")) {
        let (stem, text) = (file.file_stem().unwrap_or_default().to_string_lossy().to_string(), std::fs::read(&file)?);
        put("lambda_event", format!("fixture-{stem}.json"), text.clone());
        if stem.starts_with("cloudtrail-") {
            put("cloudtrail_event", format!("fixture-{stem}.json"), text.clone());
        }
        let value: Value = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
        if stem == "slack-block-actions" {
            let form =
                serde_urlencoded::to_string([("payload", String::from_utf8_lossy(&text))]).map_err(std::io::Error::other)?;
            put("slack_interaction", format!("fixture-{stem}"), form.into_bytes());
        }
        if stem == "slack-signature"
            && let Some(body) = value["body"].as_str()
        {
            put("slack_command", format!("fixture-{stem}"), body.as_bytes().to_vec());
        }
        for (i, record) in value["Records"].as_array().into_iter().flatten().enumerate() {
            put("stream_record", format!("fixture-{stem}-{i}.json"), record.to_string().into_bytes());
            for image in ["Keys", "OldImage", "NewImage"] {
                if let Some(item) = record["dynamodb"].get(image) {
                    put("seed_item", format!("fixture-{stem}-{i}-{image}.json"), item.to_string().into_bytes());
                }
            }
        }
    }
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    for (i, block) in readme.split("```toml\n").skip(1).filter_map(|rest| rest.split_once("```")).enumerate() {
        put("config_toml", format!("readme-{i}.toml"), block.0.as_bytes().to_vec());
    }
    Ok(inputs)
}

fn sorted(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|f| f.is_file());
    files.sort();
    Ok(files)
}
