//! Conveniences on the generated WIT types: constructors for decisions and header
//! operations, and header lookup on a request head. Used by plugin code and tests alike.

use crate::{
    Abort, Action, Decision, Destination, DirectResponse, Forward, Header, HeaderInterest,
    HeaderMutation, Interest, Redirect, RequestHead,
};

impl Header {
    /// A header; the name is lowercased as the WIT contract requires.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Header {
            name: name.into().to_ascii_lowercase(),
            value: value.into(),
        }
    }
}

impl Default for HeaderMutation {
    fn default() -> Self {
        HeaderMutation {
            set: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl HeaderMutation {
    /// True when applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

impl Destination {
    /// A destination with weight 0 (a lone destination needs none) and no header changes.
    pub fn new(host: impl Into<String>) -> Self {
        Destination {
            host: host.into(),
            subset: None,
            port: None,
            weight: 0,
            request_headers: HeaderMutation::default(),
            response_headers: HeaderMutation::default(),
        }
    }
}

impl Forward {
    /// Forward to these destinations with nothing else changed.
    pub fn to(destinations: Vec<Destination>) -> Self {
        Forward {
            destinations,
            request_headers: HeaderMutation::default(),
            response_headers: HeaderMutation::default(),
            rewrite_path: None,
            rewrite_authority: None,
            timeout_ms: None,
            retries: None,
            mirrors: Vec::new(),
        }
    }
}

impl Default for Decision {
    fn default() -> Self {
        Decision::no_route()
    }
}

impl Decision {
    /// The decision the chain starts from: nothing routed.
    pub fn no_route() -> Self {
        Decision {
            route: None,
            delay_ms: None,
            action: Action::NoRoute,
            log_fields: Vec::new(),
        }
    }

    /// Keep route and delay, replace the action.
    pub fn with_action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// A direct response with a text body.
    pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Action {
        Action::Respond(DirectResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        })
    }

    /// An abort with this HTTP status.
    pub fn abort(status: u16) -> Action {
        Action::Abort(Abort {
            status,
            grpc_status: None,
        })
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: impl Into<String>) -> Action {
        Action::Redirect(Redirect {
            status,
            location: location.into(),
        })
    }

    /// The forward action, if the decision is to forward.
    pub fn forward_mut(&mut self) -> Option<&mut Forward> {
        match &mut self.action {
            Action::Forward(f) => Some(f),
            _ => None,
        }
    }

    /// True when the chain stops here (redirect, direct response, abort).
    pub fn is_final(&self) -> bool {
        matches!(
            self.action,
            Action::Redirect(_) | Action::Respond(_) | Action::Abort(_)
        )
    }

    /// Add a `key=value` field to the request's access log line.
    pub fn log_field(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.log_fields.push(Header {
            name: key.into(),
            value: value.into(),
        });
    }
}

impl Interest {
    /// Ask for these headers (names are lowercased).
    pub fn headers<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.into().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        Interest {
            headers: if names.is_empty() {
                HeaderInterest::None
            } else {
                HeaderInterest::Named(names)
            },
        }
    }
}

impl RequestHead {
    /// The first value of header `name` (lowercase), if the policy asked for it and the
    /// request carried it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Every value of header `name` (lowercase), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value.as_str())
    }
}
