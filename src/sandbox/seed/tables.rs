//! The seed's raw material: countries, and for each locale its names (as written and in
//! ASCII for email addresses), cities with postcodes and landline patterns, mobile
//! patterns, streets and company names; and the phrases notes, emails and tasks use.

/// A country in Capsule's `/countries` list.
#[derive(Debug)]
pub struct CountryCode {
    pub name: &'static str,
    pub alpha2: &'static str,
    pub alpha3: &'static str,
    pub numeric: u16,
}

macro_rules! countries {
    ($(($name:literal, $a2:literal, $a3:literal, $num:literal)),* $(,)?) => {
        &[$(CountryCode { name: $name, alpha2: $a2, alpha3: $a3, numeric: $num }),*]
    };
}

/// Capsule's country list (a subset of ISO 3166, every country the seed uses included).
pub const COUNTRIES: &[CountryCode] = countries![
    ("Åland Islands", "AX", "ALA", 248),
    ("Australia", "AU", "AUS", 36),
    ("Austria", "AT", "AUT", 40),
    ("Belgium", "BE", "BEL", 56),
    ("Brazil", "BR", "BRA", 76),
    ("Canada", "CA", "CAN", 124),
    ("China", "CN", "CHN", 156),
    ("Côte d'Ivoire", "CI", "CIV", 384),
    ("Denmark", "DK", "DNK", 208),
    ("Finland", "FI", "FIN", 246),
    ("France", "FR", "FRA", 250),
    ("Germany", "DE", "DEU", 276),
    ("India", "IN", "IND", 356),
    ("Ireland", "IE", "IRL", 372),
    ("Italy", "IT", "ITA", 380),
    ("Japan", "JP", "JPN", 392),
    ("Mexico", "MX", "MEX", 484),
    ("Netherlands", "NL", "NLD", 528),
    ("New Zealand", "NZ", "NZL", 554),
    ("Norway", "NO", "NOR", 578),
    ("Poland", "PL", "POL", 616),
    ("Portugal", "PT", "PRT", 620),
    ("South Africa", "ZA", "ZAF", 710),
    ("Spain", "ES", "ESP", 724),
    ("Sweden", "SE", "SWE", 752),
    ("Switzerland", "CH", "CHE", 756),
    ("United Kingdom", "GB", "GBR", 826),
    ("United States", "US", "USA", 840),
];

/// A city: its region, postcodes and landline patterns (`#` is a random digit).
pub struct City {
    pub name: &'static str,
    pub state: Option<&'static str>,
    pub zips: &'static [&'static str],
    pub phones: &'static [&'static str],
}

/// How people in one country are named, numbered and addressed.
pub struct Locale {
    pub country: &'static str,
    /// (as written, ASCII for email addresses)
    pub first: &'static [(&'static str, &'static str)],
    pub last: &'static [(&'static str, &'static str)],
    pub cities: &'static [City],
    pub mobiles: &'static [&'static str],
    /// `{n}` is a house number.
    pub streets: &'static [&'static str],
    pub home_domain: &'static str,
    pub org_words: &'static [&'static str],
    pub org_suffix: &'static str,
    pub titles: &'static [&'static str],
}

pub const LOCALES: &[Locale] = &[
    Locale {
        country: "United Kingdom",
        first: &[
            ("Oliver", "oliver"),
            ("Amelia", "amelia"),
            ("Chloë", "chloe"),
            ("Harry", "harry"),
            ("Priya", "priya"),
            ("Callum", "callum"),
            ("Imogen", "imogen"),
            ("Tomás", "tomas"),
        ],
        last: &[
            ("Smith", "smith"),
            ("O'Neill", "oneill"),
            ("Patel", "patel"),
            ("Davies", "davies"),
            ("Okafor", "okafor"),
            ("Brontë", "bronte"),
            ("Hughes", "hughes"),
            ("MacLeod", "macleod"),
        ],
        cities: &[
            City {
                name: "London",
                state: None,
                zips: &["W1U 4NW", "EC2A 4BX", "SE1 9SG", "N1 7GU"],
                phones: &["020 7946 0###"],
            },
            City { name: "Manchester", state: None, zips: &["M1 1AE", "M4 5JD"], phones: &["0161 496 0###"] },
            City {
                name: "Edinburgh",
                state: Some("Scotland"),
                zips: &["EH1 1YZ", "EH3 9DR"],
                phones: &["0131 496 0###"],
            },
            City { name: "Bristol", state: None, zips: &["BS1 4DJ", "BS8 1TH"], phones: &["0117 496 0###"] },
        ],
        mobiles: &["07911 123###", "07890 4#####"],
        streets: &[
            "{n} Marylebone High Street",
            "{n} Deansgate",
            "Unit {n}, Brunswick Court\n14 Baker Street",
            "{n} Princes Street",
        ],
        home_domain: "example.co.uk",
        org_words: &["Brightlane", "Côté Nord", "Thistle & Oak", "Harbourside", "Kingsgate"],
        org_suffix: "Ltd",
        titles: &["Mr", "Mrs", "Ms", "Dr"],
    },
    Locale {
        country: "United States",
        first: &[
            ("James", "james"),
            ("Zoë", "zoe"),
            ("Aaliyah", "aaliyah"),
            ("Marcus", "marcus"),
            ("José", "jose"),
            ("Emily", "emily"),
            ("DeShawn", "deshawn"),
            ("Nguyễn", "nguyen"),
        ],
        last: &[
            ("Johnson", "johnson"),
            ("García", "garcia"),
            ("Nguyen", "nguyen"),
            ("Williams", "williams"),
            ("Kowalski", "kowalski"),
            ("O'Brien", "obrien"),
            ("Delgado", "delgado"),
        ],
        cities: &[
            City {
                name: "San Francisco",
                state: Some("CA"),
                zips: &["94105", "94110"],
                phones: &["(415) 555-0###", "415-555-01##"],
            },
            City {
                name: "New York",
                state: Some("NY"),
                zips: &["10001", "10013"],
                phones: &["(212) 555-01##", "+1 212 555 01##"],
            },
            City {
                name: "Chicago",
                state: Some("IL"),
                zips: &["60606", "60611"],
                phones: &["(312) 555-01##", "312.555.01##"],
            },
            City { name: "Austin", state: Some("TX"), zips: &["78701", "78704"], phones: &["(512) 555-01##"] },
        ],
        mobiles: &["(415) 555-2###", "(646) 555-01##"],
        streets: &["{n} Market Street", "{n} North Rush Street", "{n} Congress Avenue, Suite 200", "{n} 5th Avenue"],
        home_domain: "example.com",
        org_words: &["Harbor & Pine", "Redwood", "Lakeshore", "Bluebonnet", "Empire"],
        org_suffix: "Inc.",
        titles: &["Mr", "Ms", "Dr"],
    },
    Locale {
        country: "Germany",
        first: &[
            ("Jürgen", "juergen"),
            ("Lena", "lena"),
            ("Jörg", "joerg"),
            ("Käthe", "kaethe"),
            ("Matthias", "matthias"),
            ("Sören", "soeren"),
        ],
        last: &[
            ("Müller", "mueller"),
            ("Weiß", "weiss"),
            ("Schröder", "schroeder"),
            ("Groß", "gross"),
            ("Köhler", "koehler"),
            ("Becker", "becker"),
        ],
        cities: &[
            City {
                name: "Berlin",
                state: Some("Berlin"),
                zips: &["10117", "10969"],
                phones: &["030 901820", "030 2589 4###"],
            },
            City { name: "München", state: Some("Bayern"), zips: &["80331", "80469"], phones: &["089 2### ####"] },
            City { name: "Hamburg", state: Some("Hamburg"), zips: &["20095", "22767"], phones: &["040 3### ####"] },
            City { name: "Köln", state: Some("Nordrhein-Westfalen"), zips: &["50667"], phones: &["0221 9### ###"] },
        ],
        mobiles: &["0151 2### ####", "0170 3######"],
        streets: &["Friedrichstraße {n}", "Königsallee {n}", "Große Elbstraße {n}", "Schönhauser Allee {n}"],
        home_domain: "example.de",
        org_words: &["Nordlicht", "Bergblick", "Elbufer", "Sonnenhof", "Grünwald"],
        org_suffix: "GmbH",
        titles: &["Dr", "Prof"],
    },
    Locale {
        country: "France",
        first: &[
            ("Renée", "renee"),
            ("François", "francois"),
            ("Élodie", "elodie"),
            ("Hélène", "helene"),
            ("Noël", "noel"),
            ("Loïc", "loic"),
        ],
        last: &[
            ("Lefèvre", "lefevre"),
            ("Dubois", "dubois"),
            ("Béranger", "beranger"),
            ("Côté", "cote"),
            ("Girard", "girard"),
            ("Ménard", "menard"),
        ],
        cities: &[
            City { name: "Paris", state: None, zips: &["75008", "75011"], phones: &["01 4# ## ## ##"] },
            City { name: "Lyon", state: None, zips: &["69002"], phones: &["04 78 ## ## ##"] },
            City { name: "Marseille", state: None, zips: &["13001"], phones: &["04 91 ## ## ##"] },
        ],
        mobiles: &["06 ## ## ## ##", "07 6# ## ## ##"],
        streets: &["{n} rue de Rivoli", "{n} avenue Jean Jaurès", "{n} quai Saint-Antoine"],
        home_domain: "example.fr",
        org_words: &["Boulangerie Ménard", "Atelier Lumière", "Côte d'Azur Conseil", "Maison Béranger"],
        org_suffix: "SARL",
        titles: &[],
    },
    Locale {
        country: "Spain",
        first: &[("José", "jose"), ("María", "maria"), ("Iñaki", "inaki"), ("Begoña", "begona"), ("Nuria", "nuria")],
        last: &[
            ("Peña", "pena"),
            ("Muñoz", "munoz"),
            ("Ibáñez", "ibanez"),
            ("García", "garcia"),
            ("Fernández", "fernandez"),
        ],
        cities: &[
            City { name: "Madrid", state: Some("Madrid"), zips: &["28013", "28004"], phones: &["91# ### ###"] },
            City { name: "Barcelona", state: Some("Cataluña"), zips: &["08002"], phones: &["93# ## ## ##"] },
            City { name: "Sevilla", state: Some("Andalucía"), zips: &["41001"], phones: &["954 ## ## ##"] },
        ],
        mobiles: &["6## ### ###"],
        streets: &["Calle de Alcalá {n}", "Passeig de Gràcia {n}", "Calle Sierpes {n}"],
        home_domain: "example.es",
        org_words: &["Muñoz y Asociados", "Olivares del Sur", "Tecnologías Ibéricas"],
        org_suffix: "S.L.",
        titles: &[],
    },
    Locale {
        country: "Sweden",
        first: &[("Åsa", "asa"), ("Björn", "bjorn"), ("Märta", "marta"), ("Göran", "goran"), ("Sofia", "sofia")],
        last: &[("Ångström", "angstrom"), ("Sjöberg", "sjoberg"), ("Lindqvist", "lindqvist"), ("Öberg", "oberg")],
        cities: &[
            City { name: "Stockholm", state: None, zips: &["111 22", "114 35"], phones: &["08-5## ### ##"] },
            City { name: "Göteborg", state: None, zips: &["411 04"], phones: &["031-7## ## ##"] },
        ],
        mobiles: &["070-### ## ##"],
        streets: &["Drottninggatan {n}", "Kungsgatan {n}", "Östra Hamngatan {n}"],
        home_domain: "example.se",
        org_words: &["Øresund Logistik", "Fjällräv Design", "Skärgård"],
        org_suffix: "AB",
        titles: &[],
    },
    Locale {
        country: "Ireland",
        first: &[("Siobhán", "siobhan"), ("Seán", "sean"), ("Aoife", "aoife"), ("Pádraig", "padraig")],
        last: &[("Ó Briain", "obriain"), ("Murphy", "murphy"), ("Kelly", "kelly"), ("Ní Bhriain", "nibhriain")],
        cities: &[
            City {
                name: "Dublin",
                state: Some("Co. Dublin"),
                zips: &["D02 X285", "D08 T6YA"],
                phones: &["01 6## ####"],
            },
            City { name: "Cork", state: Some("Co. Cork"), zips: &["T12 RX2F"], phones: &["021 4## ####"] },
        ],
        mobiles: &["087 ### ####", "085 ### ####"],
        streets: &["{n} Grafton Street", "{n} Patrick Street"],
        home_domain: "example.ie",
        org_words: &["Liffey Works", "Shamrock Analytics"],
        org_suffix: "Ltd",
        titles: &["Mr", "Ms"],
    },
    Locale {
        country: "Netherlands",
        first: &[("Daan", "daan"), ("Saskia", "saskia"), ("Joëlle", "joelle"), ("Sem", "sem")],
        last: &[("de Vries", "devries"), ("van den Berg", "vandenberg"), ("Jansen", "jansen")],
        cities: &[
            City { name: "Amsterdam", state: None, zips: &["1012 AB", "1017 CT"], phones: &["020 5## ####"] },
            City { name: "Rotterdam", state: None, zips: &["3011 AD"], phones: &["010 4## ####"] },
        ],
        mobiles: &["06 1#######"],
        streets: &["Keizersgracht {n}", "Coolsingel {n}"],
        home_domain: "example.nl",
        org_words: &["Grachtenhuis", "Windmolen Energie"],
        org_suffix: "B.V.",
        titles: &[],
    },
    Locale {
        country: "China",
        first: &[("伟", "wei"), ("芳", "fang"), ("静", "jing"), ("磊", "lei")],
        last: &[("李", "li"), ("王", "wang"), ("张", "zhang"), ("刘", "liu")],
        cities: &[
            City { name: "北京", state: Some("北京市"), zips: &["100000"], phones: &["010 6###-####"] },
            City { name: "上海", state: Some("上海市"), zips: &["200000"], phones: &["021 6###-####"] },
        ],
        mobiles: &["138 #### ####"],
        streets: &["朝阳区建国路{n}号", "浦东新区世纪大道{n}号"],
        home_domain: "example.cn",
        org_words: &["青木科技", "东方贸易"],
        org_suffix: "有限公司",
        titles: &[],
    },
    Locale {
        country: "Poland",
        first: &[("Łukasz", "lukasz"), ("Małgorzata", "malgorzata"), ("Zofia", "zofia"), ("Paweł", "pawel")],
        last: &[
            ("Zieliński", "zielinski"),
            ("Kowalczyk", "kowalczyk"),
            ("Wójcik", "wojcik"),
            ("Dąbrowski", "dabrowski"),
        ],
        cities: &[
            City {
                name: "Warszawa",
                state: Some("mazowieckie"),
                zips: &["00-001", "00-950"],
                phones: &["22 5## ## ##"],
            },
            City { name: "Kraków", state: Some("małopolskie"), zips: &["30-001"], phones: &["12 4## ## ##"] },
        ],
        mobiles: &["512 ### ###"],
        streets: &["ul. Marszałkowska {n}", "ul. Floriańska {n}"],
        home_domain: "example.pl",
        org_words: &["Wisła Logistyka", "Żurawie Serwis"],
        org_suffix: "sp. z o.o.",
        titles: &[],
    },
    Locale {
        country: "Canada",
        first: &[("Émile", "emile"), ("Zoë", "zoe"), ("Liam", "liam"), ("Geneviève", "genevieve")],
        last: &[("Tremblay", "tremblay"), ("Gagnon", "gagnon"), ("Côté", "cote"), ("MacDonald", "macdonald")],
        cities: &[
            City { name: "Toronto", state: Some("ON"), zips: &["M5V 2T6"], phones: &["(416) 555-01##"] },
            City { name: "Vancouver", state: Some("BC"), zips: &["V6B 1A1"], phones: &["(604) 555-01##"] },
            City { name: "Montréal", state: Some("QC"), zips: &["H2Y 1C6"], phones: &["(514) 555-01##"] },
        ],
        mobiles: &["(647) 555-01##"],
        streets: &["{n} King Street West", "{n} rue Sainte-Catherine"],
        home_domain: "example.ca",
        org_words: &["Maple & Birch", "Laurentide"],
        org_suffix: "Inc.",
        titles: &["Mr", "Ms"],
    },
    Locale {
        country: "Australia",
        first: &[("Jack", "jack"), ("Matilda", "matilda"), ("Chloe", "chloe"), ("Kai", "kai")],
        last: &[("Nguyen", "nguyen"), ("Wilson", "wilson"), ("O'Connor", "oconnor")],
        cities: &[
            City { name: "Sydney", state: Some("NSW"), zips: &["2000"], phones: &["(02) 9### ####"] },
            City { name: "Melbourne", state: Some("VIC"), zips: &["3000"], phones: &["(03) 9### ####"] },
        ],
        mobiles: &["041# ### ###"],
        streets: &["{n} George Street", "{n} Collins Street"],
        home_domain: "example.com.au",
        org_words: &["Southern Cross", "Wattle & Gum"],
        org_suffix: "Pty Ltd",
        titles: &["Mr", "Ms"],
    },
];

/// The first people of every seed, so that small seeds show the awkward cases too:
/// (locale, first name, last name).
pub const SHOWCASE: &[(usize, usize, usize)] = &[
    (3, 0, 0), // Renée Lefèvre
    (2, 0, 0), // Jürgen Müller
    (5, 0, 0), // Åsa Ångström
    (1, 1, 1), // Zoë García
    (4, 0, 0), // José Peña
    (8, 0, 0), // 伟 李
    (6, 0, 0), // Siobhán Ó Briain
];

pub const JOB_TITLES: &[&str] = &[
    "Head of Procurement",
    "Technical Director",
    "Office Manager",
    "Founder",
    "Operations Lead",
    "Einkaufsleiter",
    "Directrice commerciale",
    "CFO",
    "Account Manager",
    "Responsable des achats",
    "Facilities Coordinator",
    "Marketing Manager",
];

pub const SECTORS: &[&str] =
    &["Hospitality", "Maschinenbau", "Logistics", "Studio", "Consulting", "Outfitters", "Bakery"];

pub const NOTE_TEMPLATES: &[&str] = &[
    "Call with {first}: **{n} seats** confirmed for the annual plan, invoice to go to accounts.",
    "{first} asked for the updated maintenance schedule; sending it on Friday.",
    "Met {first} at the trade fair in {city}. Interested in the premium tier.",
    "Left a voicemail for {first} about the renewal — call back next week.",
    "{first} prefers calls before 10:00 local time. Café meeting booked.",
    "Quote sent to {first}: €{price} for {n} units, valid 30 days.",
    "Follow-up with {first}:\n- delivery date confirmed\n- needs a new PO number\n- München office to be added",
];

pub const EMAIL_SUBJECTS: &[&str] =
    &["Re: Annual plan", "Quote for Q3", "Re: Delivery dates", "Invoice query", "Meeting notes — next steps"];

pub const TASK_DESCRIPTIONS: &[&str] = &[
    "Send quarterly invoice",
    "Follow up on proposal",
    "Book site visit",
    "Call back about renewal",
    "Prepare contract for signature",
    "Send product samples",
    "Schedule onboarding call",
];

pub const ABOUTS: &[&str] = &[
    "Met at the Harrogate trade fair; interested in the annual plan.",
    "Prefers calls before 10:00 CET.",
    "Referred by an existing customer. Decision maker for the Nordics.",
    "Budget approved for Q3 — wants a demo first.",
];
