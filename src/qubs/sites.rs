//! Site time zones from whichever source knows them.
//!
//! QUBS documents that partner endpoints list sites and return their configuration, but not
//! their paths or shapes; the bridge assumes `GET {domain}/sites` and
//! `GET {domain}/sites/{siteName}` with an IANA `timeZone`. So a site's zone comes from, in
//! order: `qubs.site_time_zones` (configuration wins), the sites endpoint (when
//! `qubs.sites.endpoint` is on and the endpoint exists), `qubs.default_time_zone`. A sites
//! endpoint that answers 404, 405 or 501 for the list is taken as absent: one warning, then
//! configuration alone, until the endpoint answers again (the readiness probe asks each
//! round). Nothing here ever fails a domain.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use reqwest::StatusCode;
use tokio::time::Instant;

use super::client::Client;
use super::model::SiteSettings;
use super::problem::{Error, ErrorKind};
use crate::config::{DefaultTimeZone, QubsSettings};

/// Whether a failed sites call says the endpoint is not there at all.
pub(crate) fn endpoint_missing(e: &Error) -> bool {
    matches!(
        e.status(),
        Some(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED)
    )
}

/// Where a domain's site time zones come from, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeZoneSource {
    /// The sites endpoint answers (configured zones still win).
    SitesEndpoint,
    /// `qubs.sites.endpoint = false`.
    ConfigurationByChoice,
    /// The sites endpoint answered 404/405/501.
    ConfigurationEndpointMissing,
    /// Not known yet: the endpoint has not been asked.
    Unknown,
}

impl TimeZoneSource {
    pub fn describe(self) -> &'static str {
        match self {
            TimeZoneSource::SitesEndpoint => "sites endpoint",
            TimeZoneSource::ConfigurationByChoice => "configuration (qubs.sites.endpoint = false)",
            TimeZoneSource::ConfigurationEndpointMissing => {
                "configuration (the sites endpoint is not there)"
            }
            TimeZoneSource::Unknown => "not checked yet",
        }
    }
}

/// Configured zones and what is known of each domain's sites endpoint.
pub(crate) struct SiteZones {
    endpoint: bool,
    configured: BTreeMap<String, String>,
    default_zone: Option<DefaultTimeZone>,
    /// Per domain: did the sites list answer (`true`) or was it missing (`false`)?
    found: Mutex<HashMap<String, bool>>,
    /// Sites the endpoint did not know, until the site cache TTL passes.
    unknown: Mutex<HashMap<(String, String), Instant>>,
    /// Warnings already given (each is given once).
    warned: Mutex<HashSet<String>>,
}

impl SiteZones {
    pub(crate) fn new(settings: &QubsSettings) -> SiteZones {
        SiteZones {
            endpoint: settings.sites.endpoint,
            configured: settings.site_time_zones.clone(),
            default_zone: settings.default_time_zone.clone(),
            found: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Records what the sites list answered for `domain`.
    pub(crate) fn endpoint_found(&self, domain: &str, found: bool) {
        let before = self
            .found
            .lock()
            .expect("sites state")
            .insert(domain.to_string(), found);
        if !found && before != Some(false) {
            tracing::warn!(
                domain,
                "QUBS has no sites endpoint here (404/405/501); site time zones come from qubs.site_time_zones and qubs.default_time_zone"
            );
        } else if found && before == Some(false) {
            tracing::info!(domain, "the QUBS sites endpoint answers again");
        }
    }

    fn endpoint_state(&self, domain: &str) -> Option<bool> {
        self.found.lock().expect("sites state").get(domain).copied()
    }

    fn warn_once(&self, key: String, warn: impl FnOnce()) {
        if self.warned.lock().expect("sites warnings").insert(key) {
            warn();
        }
    }

    fn settings(&self, domain: &str, site_name: Option<&str>, zone: &str) -> SiteSettings {
        SiteSettings {
            domain: Some(domain.to_string()),
            site_name: site_name.map(str::to_string),
            time_zone: Some(zone.to_string()),
            extra: Default::default(),
        }
    }
}

fn usable_zone(settings: &SiteSettings) -> bool {
    settings
        .time_zone
        .as_deref()
        .is_some_and(|z| jiff::tz::TimeZone::get(z.trim()).is_ok())
}

impl Client {
    /// The settings of a site with its time zone, from the first source that knows it (see
    /// the module doc); `None` when none does. An answer in another shape than assumed counts
    /// as no zone from QUBS (said once). Errors only when the sites endpoint fails in a way
    /// that may pass (5xx, timeouts, refused credentials): guessing then could stamp a wrong
    /// time.
    pub async fn site_for(
        &self,
        domain: &str,
        site_name: Option<&str>,
    ) -> Result<Option<SiteSettings>, Error> {
        let zones = &self.inner().sites;
        let name = site_name.map(str::trim).filter(|s| !s.is_empty());
        let mut from_qubs = None;
        if let Some(name) = name {
            if let Some(zone) = zones.configured.get(name) {
                return Ok(Some(zones.settings(domain, Some(name), zone.trim())));
            }
            if zones.endpoint && zones.endpoint_state(domain) != Some(false) {
                from_qubs = self.site_from_endpoint(domain, name).await?;
                if let Some(s) = &from_qubs
                    && usable_zone(s)
                {
                    return Ok(from_qubs);
                }
            }
        }
        match zones.default_zone(domain) {
            Some(zone) => {
                let mut settings = zones.settings(domain, name, zone);
                if let Some(s) = from_qubs {
                    // Keep whatever else QUBS said about the site.
                    settings.extra = s.extra;
                }
                Ok(Some(settings))
            }
            None => Ok(from_qubs),
        }
    }

    /// The endpoint's settings for a known site; `None` when the endpoint or the site is
    /// not there (each said once in the log).
    async fn site_from_endpoint(
        &self,
        domain: &str,
        name: &str,
    ) -> Result<Option<SiteSettings>, Error> {
        let zones = &self.inner().sites;
        let key = (domain.to_string(), name.to_string());
        if let Some(at) = zones.unknown.lock().expect("unknown sites").get(&key)
            && at.elapsed() < self.site_cache_ttl()
        {
            return Ok(None);
        }
        match self.site_settings(domain, name).await {
            Ok(settings) => {
                if !usable_zone(&settings) {
                    zones.warn_once(format!("zone\0{domain}\0{name}"), || {
                        tracing::warn!(
                            domain,
                            site = name,
                            "QUBS's settings of this site carry no usable IANA timeZone; using qubs.default_time_zone if set"
                        )
                    });
                }
                Ok(Some(settings))
            }
            Err(e) if matches!(e.kind, ErrorKind::Decode(_)) => {
                // Another shape than assumed: as good as no zone from QUBS.
                zones.warn_once(format!("shape\0{domain}"), || {
                    tracing::warn!(
                        domain,
                        error = %e,
                        "QUBS's site settings are not in the assumed shape; site time zones come from qubs.site_time_zones and qubs.default_time_zone"
                    )
                });
                Ok(None)
            }
            Err(e) if endpoint_missing(&e) => {
                // The site unknown, or the endpoint missing? The list tells.
                let listed = match zones.endpoint_state(domain) {
                    Some(found) => found,
                    None => match self.sites(domain).await {
                        // A list in another shape is still a list.
                        Ok(_) => true,
                        Err(e) if matches!(e.kind, ErrorKind::Decode(_)) => true,
                        Err(e) if endpoint_missing(&e) => false,
                        Err(e) => return Err(e),
                    },
                };
                if listed {
                    zones.warn_once(format!("unknown\0{domain}\0{name}"), || {
                        tracing::warn!(
                            domain,
                            site = name,
                            "QUBS does not know this scheduled site; using qubs.default_time_zone if set"
                        )
                    });
                    zones
                        .unknown
                        .lock()
                        .expect("unknown sites")
                        .insert(key, Instant::now());
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Where `domain`'s site time zones come from now.
    pub fn time_zone_source(&self, domain: &str) -> TimeZoneSource {
        let zones = &self.inner().sites;
        if !zones.endpoint {
            return TimeZoneSource::ConfigurationByChoice;
        }
        match zones.endpoint_state(domain) {
            Some(true) => TimeZoneSource::SitesEndpoint,
            Some(false) => TimeZoneSource::ConfigurationEndpointMissing,
            None => TimeZoneSource::Unknown,
        }
    }

    /// Whether the sites endpoint is to be asked at all (`qubs.sites.endpoint`).
    pub fn uses_sites_endpoint(&self) -> bool {
        self.inner().sites.endpoint
    }
}

impl SiteZones {
    fn default_zone(&self, domain: &str) -> Option<&str> {
        self.default_zone.as_ref()?.for_domain(domain)
    }
}
