//! `policy`: the filter's own engine on the command line.
//!
//!   policy check FILE
//!   policy explain FILE --host H --path P --status N [--header k:v]... [--route NAME]
//!                       [--source proxy|upstream] [--method M] [--response-header k:v]...
//!                       [--route-policy NAME] [--vhost-policy NAME]
//!                       [--route-metadata NS.KEY=VALUE]... [--vhost-metadata NS.KEY=VALUE]...
//!   policy import-gcp URLMAP.json --service BACKEND=cluster ...
//!   policy import-envoy-gateway POLICY.json [--service HOST=cluster]... [--configmap NAME=FILE]...
//!   policy test POLICY CASES [--coverage] [--fail-under PERCENT]

use custom_error_pages::config::{self, Config, POLICY_KEY};
use custom_error_pages::decide::Decision;
use custom_error_pages::request::{RequestView, StaticRequest};
use custom_error_pages::{cases, envoy_gateway, error_service, gcp, negotiate, reply};
use std::process::ExitCode;

const USAGE: &str = "usage:
  policy check FILE
  policy explain FILE --host H --path P --status N [--header name:value]... [--route NAME]
                      [--source proxy|upstream] [--method M] [--response-header name:value]...
                      [--route-policy NAME] [--vhost-policy NAME]
                      [--route-metadata NS.KEY=VALUE]... [--vhost-metadata NS.KEY=VALUE]...
  policy import-gcp URLMAP.json --service BACKEND=CLUSTER [--service ...]
  policy import-envoy-gateway BACKENDTRAFFICPOLICY.json [--service HOST=CLUSTER]... [--configmap NAME=FILE]...
  policy test POLICY CASES [--coverage] [--fail-under PERCENT]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("explain") => explain(&args[1..]),
        Some("import-gcp") => import(&args[1..]),
        Some("import-envoy-gateway") => import_envoy_gateway(&args[1..]),
        Some("test") => test(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: Option<&String>) -> Result<Vec<u8>, String> {
    let path = path.ok_or(USAGE)?;
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

fn load(path: Option<&String>) -> Result<Config, String> {
    let cfg = config::load(&read(path)?).map_err(|e| e.to_string())?;
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    Ok(cfg)
}

fn check(args: &[String]) -> Result<(), String> {
    let cfg = load(args.first())?;
    let rules: usize = cfg.policies.iter().map(|p| p.rules.len()).sum();
    println!("ok: {rules} rules in {} policies, {} path matchers", cfg.policies.len(), cfg.matchers.len());
    Ok(())
}

/// `--flag value` pairs after the file.
fn flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        out.push((flag.trim_start_matches("--").to_string(), value.clone()));
    }
    Ok(out)
}

/// `NS.KEY=VALUE` (the key is after the last dot: namespaces such as `envoy.lb` have dots).
fn metadata_flag(flag: &str, v: &str) -> Result<(String, String, String), String> {
    let (path, value) = v.split_once('=').ok_or_else(|| format!("--{flag} {v}: expected NAMESPACE.KEY=VALUE"))?;
    let (ns, key) = path.rsplit_once('.').ok_or_else(|| format!("--{flag} {v}: expected NAMESPACE.KEY=VALUE"))?;
    Ok((ns.to_string(), key.to_string(), value.to_string()))
}

fn explain(args: &[String]) -> Result<(), String> {
    let cfg = load(args.first())?;
    let mut req = StaticRequest::default();
    let mut status = None;
    let mut method = "GET".to_string();
    for (k, v) in flags(args.get(1..).unwrap_or(&[]))? {
        match k.as_str() {
            "host" => req.authority = v,
            "path" => req.path = v,
            "status" => status = Some(v.parse::<u16>().map_err(|_| format!("--status {v}: not a status code"))?),
            "header" | "response-header" => {
                let (name, value) = v.split_once(':').ok_or_else(|| format!("--{k} {v}: expected name:value"))?;
                let to = if k == "header" { &mut req.headers } else { &mut req.response_headers };
                to.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            "route" => req.route_name = Some(v),
            "source" => req.made_by_proxy = v == "proxy",
            "method" => method = v,
            // What Envoy's route (or virtual host) carries in its metadata: the policy it
            // names in the configured namespace, or any `filter_metadata` string.
            "route-policy" => req.route_metadata.push((cfg.metadata_namespace.clone(), POLICY_KEY.into(), v)),
            "vhost-policy" => req.virtual_host_metadata.push((cfg.metadata_namespace.clone(), POLICY_KEY.into(), v)),
            "route-metadata" => req.route_metadata.push(metadata_flag(&k, &v)?),
            "vhost-metadata" => req.virtual_host_metadata.push(metadata_flag(&k, &v)?),
            other => return Err(format!("unknown option --{other}\n{USAGE}")),
        }
    }
    let status = status.ok_or("--status is required")?;
    if req.path.is_empty() {
        req.path = "/".into();
    }
    let mut trace = Vec::new();
    let decision = cfg.decide_observed(status, &mut req, &mut trace);
    for line in &trace {
        println!("- {line}");
    }
    match decision {
        Decision::None => println!("result: {status} passes through untouched"),
        Decision::Passthrough(rule) => {
            println!("result: {status} passes through untouched (passthrough rule {})", rule.id)
        }
        Decision::Serve(rule, serve) => {
            let accept = req.header("accept");
            let variant = negotiate::choose(serve, accept.as_deref());
            let accept_language = req.header("accept-language");
            let language = serve.languages.get(negotiate::language_for(serve, &mut req));
            let lang = language.map_or("", String::as_str);
            let served = reply::served_status(serve, status);
            println!("result: served by {} (level: {})", rule.id, rule.level.as_str());
            println!(
                "  status: {served}{}",
                if served != status { format!(" (overrides {status})") } else { String::new() }
            );
            if variant.content_type.is_empty() {
                println!("  variant: none (an empty reply: no body, no content-type)");
            } else {
                println!("  variant: {}", variant.content_type);
            }
            if let Some(lang) = language {
                let from = match &accept_language {
                    Some(a) if serve.languages.len() > 1 => format!("from accept-language \"{a}\""),
                    _ if serve.languages.len() > 1 => "no accept-language: the default".to_string(),
                    _ => "the rule's only language".to_string(),
                };
                println!("  language: {lang} ({from}; of {})", serve.languages.join(", "));
            }
            match (&variant.path, cfg.service(serve.service)) {
                (Some(p), Some(svc)) => {
                    println!(
                        "  object: GET {} from cluster \"{}\" (authority {}, timeout {} ms, cached up to {} s)",
                        error_service::object_path(p, status, lang),
                        svc.cluster,
                        svc.authority,
                        svc.timeout_ms,
                        svc.cache_ttl_s
                    );
                    let prewarmed = svc.prewarm
                        && (!error_service::per_code(p)
                            || rule.specs.iter().any(|s| s.lo == status && s.hi == status)
                            || svc.prewarm_codes.contains(&status));
                    println!(
                        "  prewarmed: {}",
                        if prewarmed {
                            "yes (fetched when the configuration goes live, refreshed before it expires)"
                        } else {
                            "no (fetched on the first such error's path)"
                        }
                    );
                    let last = match variant.body.as_ref().or(serve.default.body.as_ref()) {
                        Some(_) => "the rule's inline body".to_string(),
                        None if served < 400 => format!("the built-in generic page, as {status} (never a success)"),
                        None => "the built-in generic page".to_string(),
                    };
                    println!(
                        "  if the error service is down: the stale copy (up to {} s past its TTL), else {last}",
                        svc.stale_if_error_s
                    );
                }
                _ => println!("  object: inline body ({} bytes)", variant.body.as_deref().unwrap_or("").len()),
            }
            if !serve.headers.is_empty() {
                println!(
                    "  headers set: {}",
                    serve.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
                );
            }
            if method == "HEAD" {
                println!("  HEAD: status and headers only");
            }
        }
    }
    Ok(())
}

fn import(args: &[String]) -> Result<(), String> {
    let text = read(args.first())?;
    let url_map: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("URL map: not valid JSON: {e}"))?;
    let mut services = Vec::new();
    for (k, v) in flags(args.get(1..).unwrap_or(&[]))? {
        match k.as_str() {
            "service" => {
                let (backend, cluster) =
                    v.split_once('=').ok_or_else(|| format!("--service {v}: expected BACKEND=CLUSTER"))?;
                services.push((backend.to_string(), cluster.to_string()));
            }
            other => return Err(format!("unknown option --{other}\n{USAGE}")),
        }
    }
    print_imported(gcp::import(&url_map, &services)?)
}

/// Notes on stderr, the policy on stdout, once it is sure to load in the filter.
fn print_imported(imported: gcp::Imported) -> Result<(), String> {
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    let text = serde_json::to_string_pretty(&imported.policy).map_err(|e| e.to_string())?;
    config::load(text.as_bytes()).map_err(|e| format!("the imported policy does not load: {e}"))?;
    println!("{text}");
    Ok(())
}

fn import_envoy_gateway(args: &[String]) -> Result<(), String> {
    let text = read(args.first())?;
    let policy: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("BackendTrafficPolicy: not valid JSON: {e}"))?;
    let (mut services, mut config_maps) = (Vec::new(), Vec::new());
    for (k, v) in flags(args.get(1..).unwrap_or(&[]))? {
        let (name, value) = v.split_once('=').ok_or_else(|| format!("--{k} {v}: expected NAME=VALUE"))?;
        match k.as_str() {
            "service" => services.push((name.to_string(), value.to_string())),
            "configmap" => {
                let body =
                    String::from_utf8(read(Some(&value.to_string()))?).map_err(|_| format!("{value}: not UTF-8"))?;
                config_maps.push((name.to_string(), body));
            }
            other => return Err(format!("unknown option --{other}\n{USAGE}")),
        }
    }
    print_imported(envoy_gateway::import(&policy, &services, &config_maps)?)
}

/// Every case through the engine; a failure prints the case, what differs and the engine's
/// trace. Fails on any failing case, and below `--fail-under` percent of rules reached.
fn test(args: &[String]) -> Result<(), String> {
    let cfg = load(args.first())?;
    let cases_path = args.get(1).ok_or(USAGE)?;
    let list = cases::parse(&read(Some(cases_path))?, &cfg).map_err(|e| format!("{cases_path}: {e}"))?;
    let (mut coverage, mut fail_under) = (false, None);
    let mut rest = args.get(2..).unwrap_or(&[]).iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--coverage" => coverage = true,
            "--fail-under" => {
                let v = rest.next().ok_or("--fail-under needs a percentage")?;
                let n: f64 = v.parse().map_err(|_| format!("--fail-under {v}: not a number"))?;
                fail_under = Some(n);
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let mut decided = Vec::with_capacity(list.len());
    let mut failed = 0;
    for case in &list {
        let got = cases::decide(&cfg, case);
        let diff = cases::mismatches(&case.expect, &got);
        if !diff.is_empty() {
            failed += 1;
            let r = &case.request;
            println!(
                "FAIL {}: {} {}{} -> {}",
                case.name,
                if r.made_by_proxy { "proxy" } else { "upstream" },
                r.authority,
                r.path,
                case.status
            );
            for d in &diff {
                println!("  {d}");
            }
            println!("  engine:");
            for line in &got.trace {
                println!("  - {line}");
            }
        }
        decided.push(got);
    }
    let (missed, total) = cases::unreached(&cfg, &decided);
    let reached = total - missed.len();
    let percent = if total == 0 { 100.0 } else { 100.0 * reached as f64 / total as f64 };
    if coverage {
        for id in &missed {
            println!("not reached: {id}");
        }
    }
    println!(
        "{} cases: {} passed, {failed} failed; rules reached: {reached}/{total} ({percent:.1} %)",
        list.len(),
        list.len() - failed
    );
    if failed > 0 {
        return Err(format!("{failed} of {} cases failed", list.len()));
    }
    if let Some(min) = fail_under {
        if percent < min {
            return Err(format!("rule coverage {percent:.1} % is under {min} %"));
        }
    }
    Ok(())
}
