//! The operational schema of Sokana's transactional core (`domain.md`): table and column names as in
//! production. The seeder creates it; the extractor never relies on it (it reads the live catalog).

use super::types::ColumnType::{self, *};

const MONEY: ColumnType = Numeric { precision: 12, scale: 2 };
const RATE: ColumnType = Numeric { precision: 8, scale: 2 };

/// One table of the operational database.
#[derive(Debug)]
pub struct TableDef {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColumnType)],
    pub primary_key: &'static [&'static str],
}

impl TableDef {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(c, _)| *c == name)
    }

    /// `CREATE TABLE` for PostgreSQL (`postgres = true`) or SQLite.
    pub fn create_sql(&self, postgres: bool) -> String {
        let mut cols: Vec<String> = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let decl = if postgres { ty.postgres_ddl() } else { ty.sqlite_ddl() };
                format!("\"{name}\" {decl}")
            })
            .collect();
        cols.push(format!("PRIMARY KEY ({})", self.primary_key.join(", ")));
        format!("CREATE TABLE {} (\n  {}\n)", self.name, cols.join(",\n  "))
    }
}

pub const PHI_CLIENTS: TableDef = TableDef {
    name: "phi_clients",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("client_number", Text),
        ("first_name", Text),
        ("last_name", Text),
        ("preferred_name", Text),
        ("email", Text),
        ("phone", Text),
        ("date_of_birth", Date),
        ("address_line1", Text),
        ("city", Text),
        ("state", Text),
        ("zip_code", Text),
        ("pronouns", Text),
        ("primary_language", Text),
        ("race_ethnicity", Text),
        ("client_age_range", Text),
        ("annual_income", Text),
        ("due_date", Date),
        ("pregnancy_number", Int),
        ("number_of_babies", Int),
        ("birth_location", Text),
        ("birth_hospital", Text),
        ("provider_type", Text),
        ("health_history", Text),
        ("allergies", Text),
        ("medications", Text),
        ("referral_source", Text),
        ("service_needed", Text),
        ("payment_method", Text),
        ("status", Text),
        ("portal_status", Text),
        ("insurance_provider", Text),
        ("policy_number", Text),
        ("requested_at", Timestamptz),
        ("matched_at", Timestamptz),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const DOULAS: TableDef = TableDef {
    name: "doulas",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("full_name", Text),
        ("email", Text),
        ("phone", Text),
        ("city", Text),
        ("state", Text),
        ("languages", TextArray),
        ("account_status", Text),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const ADMINS: TableDef = TableDef {
    name: "admins",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("full_name", Text),
        ("email", Text),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const DOULA_ASSIGNMENTS: TableDef = TableDef {
    name: "doula_assignments",
    primary_key: &["client_id", "doula_id"],
    columns: &[
        ("client_id", Uuid),
        ("doula_id", Uuid),
        ("role", Text),
        ("services", TextArray),
        ("hospital", Text),
        ("notes", Text),
        ("assigned_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const HOURS: TableDef = TableDef {
    name: "hours",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("doula_id", Uuid),
        ("client_id", Uuid),
        ("start_time", Timestamptz),
        ("end_time", Timestamptz),
        ("type", Text),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const CLIENT_ACTIVITIES: TableDef = TableDef {
    name: "client_activities",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("client_id", Uuid),
        ("created_by", Uuid),
        ("type", Text),
        ("description", Text),
        ("metadata", Json),
        ("timestamp", Timestamptz),
    ],
};

pub const PHI_CONTRACTS: TableDef = TableDef {
    name: "phi_contracts",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("client_id", Uuid),
        ("status", Text),
        ("service_type", Text),
        ("total_amount", MONEY),
        ("deposit_amount", MONEY),
        ("total_hours", RATE),
        ("hourly_rate", RATE),
        ("signed_at", Timestamptz),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const PAYMENT_SCHEDULES: TableDef = TableDef {
    name: "payment_schedules",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("contract_id", Uuid),
        ("total_amount", MONEY),
        ("deposit_amount", MONEY),
        ("installment_amount", MONEY),
        ("number_of_installments", Int),
        ("payment_frequency", Text),
        ("start_date", Date),
        ("end_date", Date),
        ("status", Text),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const PAYMENT_INSTALLMENTS: TableDef = TableDef {
    name: "payment_installments",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("schedule_id", Uuid),
        ("amount", MONEY),
        ("due_date", Date),
        ("status", Text),
        ("payment_type", Text),
        ("is_overdue", Bool),
        ("paid_at", Timestamptz),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const PHI_INVOICES: TableDef = TableDef {
    name: "phi_invoices",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("client_id", Uuid),
        ("invoice_number", Text),
        ("status", Text),
        ("total_amount", MONEY),
        ("paid_total_amount", MONEY),
        ("balance_amount", MONEY),
        ("due_date", Date),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const PAYMENTS: TableDef = TableDef {
    name: "payments",
    primary_key: &["id"],
    columns: &[
        ("id", BigInt),
        ("txn_date", Timestamptz),
        ("amount", MONEY),
        ("method", Text),
        ("gateway", Text),
        ("transaction_id", Text),
        ("client_id", Uuid),
        ("invoice_id", Uuid),
        ("contract_id", Uuid),
        ("description", Text),
    ],
};

pub const DOULA_AVAILABILITY: TableDef = TableDef {
    name: "doula_availability",
    primary_key: &["id"],
    columns: &[
        ("id", Uuid),
        ("doula_id", Uuid),
        ("start_at", Timestamptz),
        ("end_at", Timestamptz),
        ("availability_status", Text),
        ("reason", Text),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

pub const QUICKBOOKS_TOKENS: TableDef = TableDef {
    name: "quickbooks_tokens",
    primary_key: &["id"],
    columns: &[
        ("id", Int),
        ("realm_id", Text),
        ("access_token", Text),
        ("refresh_token", Text),
        ("expires_at", Timestamptz),
        ("created_at", Timestamptz),
        ("updated_at", Timestamptz),
    ],
};

/// Every table, parents before children.
pub const TABLES: &[&TableDef] = &[
    &ADMINS,
    &DOULAS,
    &PHI_CLIENTS,
    &DOULA_ASSIGNMENTS,
    &HOURS,
    &CLIENT_ACTIVITIES,
    &PHI_CONTRACTS,
    &PAYMENT_SCHEDULES,
    &PAYMENT_INSTALLMENTS,
    &PHI_INVOICES,
    &PAYMENTS,
    &DOULA_AVAILABILITY,
    &QUICKBOOKS_TOKENS,
];
