//! An order: one QUBS appointment pending reporting with what the mappings need beside it —
//! comments and alerts, attachments, and the scheduled site's settings (its time zone).
//!
//! The mapping engine reads an order as one JSON document:
//! `{"domain", "appointment", "comments", "attachments", "site", "config"}`.

use serde_json::{Map, Value, json};

use crate::qubs::{self, Appointment, Attachment, Comment, Disposition, SiteSettings};

/// What to fetch beside the appointment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Include {
    pub comments: bool,
    pub attachments: bool,
}

/// An appointment with its comments, attachments and site settings.
#[derive(Debug, Clone)]
pub struct Order {
    pub domain: String,
    pub appointment: Appointment,
    pub comments: Vec<Comment>,
    pub attachments: Vec<Attachment>,
    /// `None` when no source knows the site's time zone (see [`qubs::Client::site_for`]).
    pub site: Option<SiteSettings>,
}

impl Order {
    /// Fetches what `include` asks for beside `appointment`.
    pub async fn assemble(
        client: &qubs::Client,
        domain: &str,
        appointment: Appointment,
        include: Include,
    ) -> Result<Order, qubs::Error> {
        let id = appointment.id().to_string();
        let comments = async {
            if include.comments {
                client.comments(domain, &id).await
            } else {
                Ok(Vec::new())
            }
        };
        let attachments = async {
            if include.attachments {
                client.attachments(domain, &id, Disposition::Inline).await
            } else {
                Ok(Vec::new())
            }
        };
        // Configuration, the sites endpoint or the domain's default zone; `None` leaves
        // local times unreadable, which the mappings report.
        let site = client.site_for(domain, appointment.scheduled_site());
        let (comments, attachments, site) = futures::try_join!(comments, attachments, site)?;
        Ok(Order {
            domain: domain.to_string(),
            appointment,
            comments,
            attachments,
            site,
        })
    }

    /// The document the mapping engine reads; `config` carries configured values.
    pub fn to_json(&self, config: &Map<String, Value>) -> Value {
        json!({
            "domain": self.domain,
            "appointment": self.appointment.fields(),
            "comments": self.comments,
            "attachments": self.attachments,
            "site": self.site,
            "config": config,
        })
    }
}
