"""The world the synthetic shop is drawn from: categories, product types, brands, attributes.

Made-up brand names keep the shop free of trademarks; the rest mirrors how real catalogs are
organised (category -> product type -> brand/model line -> variants by colour, size, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

COLOURS = ("black", "white", "grey", "red", "blue", "navy", "green", "olive", "yellow",
           "pink", "purple", "brown", "beige", "orange", "silver", "teal")
APPAREL_SIZES = ("XS", "S", "M", "L", "XL", "XXL")
SHOE_SIZES = tuple(str(s) for s in (5, 6, 7, 8, 9, 10, 11, 12, 13))
BED_SIZES = ("twin", "full", "queen", "king")
FABRICS = ("cotton", "linen", "polyester", "wool", "silk", "bamboo", "fleece")

# Surface forms a shopper may type instead of the catalog's word.
WORD_SYNONYMS = {
    "grey": ("gray",), "navy": ("dark blue",), "beige": ("tan", "cream"), "olive": ("khaki",),
    "stainless steel": ("stainless",), "nonstick": ("non-stick", "non stick"),
    "XL": ("extra large",), "S": ("small",), "M": ("medium",), "L": ("large",),
}


@dataclass(frozen=True)
class CategorySpec:
    name: str
    # (catalog word, synonyms shoppers use)
    types: tuple[tuple[str, tuple[str, ...]], ...]
    brands: tuple[str, ...]
    # attribute kind -> values; "colour" always comes first in titles when present
    attributes: tuple[tuple[str, tuple[str, ...]], ...]
    price: tuple[float, float]
    # attribute kind -> the only types it applies to (a headlamp has no "4 person" capacity)
    only_for: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def attributes_of(self, product_type: str) -> dict[str, tuple[str, ...]]:
        limited = dict(self.only_for)
        return {k: v for k, v in self.attributes if k not in limited or product_type in limited[k]}


def _c(name, types, brands, attributes, price, only_for=()):
    return CategorySpec(name, tuple(types), tuple(brands), tuple(attributes), price, tuple(only_for))


CATEGORIES: tuple[CategorySpec, ...] = (
    _c("Athletic Shoes", [("running shoes", ("trainers", "runners", "jogging shoes")),
                          ("trail running shoes", ("trail runners", "off road running shoes")),
                          ("basketball shoes", ("hoop shoes", "high top sneakers")),
                          ("training shoes", ("cross trainers", "gym shoes"))],
       ["Stridewell", "Apexrun", "Nimbra", "Vantor", "Kestrel", "Boltline"],
       [("colour", COLOURS[:12]), ("size", SHOE_SIZES), ("material", ("mesh", "knit", "leather", "synthetic"))],
       (45, 180)),
    _c("Boots", [("hiking boots", ("trekking boots", "walking boots")),
                 ("work boots", ("safety boots", "steel toe boots")),
                 ("rain boots", ("wellies", "wellington boots", "rubber boots")),
                 ("chelsea boots", ("ankle boots",))],
       ["Timberfell", "Ridgeway", "Northpeak", "Ironstep", "Moorland"],
       [("colour", ("black", "brown", "beige", "grey", "olive", "navy")), ("size", SHOE_SIZES),
        ("material", ("leather", "suede", "rubber", "nubuck"))], (50, 240)),
    _c("Women's Clothing", [("summer dress", ("sundress", "day dress")), ("blouse", ("womens top", "shirt blouse")),
                            ("cardigan", ("knit sweater", "button sweater")), ("leggings", ("yoga pants", "tights"))],
       ["Lunella", "Maison Ora", "Petalwood", "Sorrel & Co"],
       [("colour", COLOURS), ("size", APPAREL_SIZES), ("material", FABRICS)], (18, 120)),
    _c("Men's Clothing", [("t-shirt", ("tee", "tshirt", "crew neck shirt")), ("polo shirt", ("polo", "golf shirt")),
                          ("chino pants", ("chinos", "khakis")), ("hoodie", ("hooded sweatshirt", "pullover hoodie")),
                          ("jeans", ("denim pants", "denim jeans"))],
       ["Harbor Lane", "Greystone", "Oakridge Supply", "Norvik"],
       [("colour", COLOURS), ("size", APPAREL_SIZES), ("material", ("cotton", "linen", "polyester", "wool", "fleece"))],
       (15, 110)),
    _c("Outerwear", [("rain jacket", ("raincoat", "waterproof jacket")), ("down jacket", ("puffer jacket", "puffer coat")),
                     ("fleece jacket", ("fleece", "zip fleece")), ("winter parka", ("parka", "winter coat"))],
       ["Northpeak", "Glacierline", "Fjordwear", "Summit Co"],
       [("colour", COLOURS[:12]), ("size", APPAREL_SIZES), ("material", ("nylon", "polyester", "gore-tex", "fleece"))],
       (60, 350)),
    _c("Bags & Luggage", [("backpack", ("rucksack", "daypack")), ("carry-on suitcase", ("cabin luggage", "carry on bag")),
                          ("duffel bag", ("gym bag", "weekender bag")), ("laptop bag", ("laptop sleeve", "computer bag"))],
       ["Voyara", "Packwell", "Trailhaus", "Meridian"],
       [("colour", COLOURS[:12]), ("capacity", ("20L", "30L", "40L", "55L")), ("material", ("nylon", "canvas", "leather", "polycarbonate"))],
       (25, 260)),
    _c("Laptops & Computers", [("laptop", ("notebook computer", "notebook pc")), ("gaming laptop", ("gaming notebook",)),
                               ("chromebook", ("chrome laptop",)), ("desktop computer", ("desktop pc", "tower pc"))],
       ["Cortexa", "Lumitek", "Zenbyte", "Arcforge"],
       [("colour", ("black", "silver", "grey", "blue")), ("screen", ("13 inch", "14 inch", "15.6 inch", "17 inch")),
        ("storage", ("256GB SSD", "512GB SSD", "1TB SSD")), ("memory", ("8GB RAM", "16GB RAM", "32GB RAM"))],
       (299, 2400)),
    _c("Computer Accessories", [("wireless mouse", ("cordless mouse", "bluetooth mouse")),
                                ("mechanical keyboard", ("gaming keyboard", "clicky keyboard")),
                                ("usb-c hub", ("usb c dock", "docking station")), ("monitor stand", ("monitor riser", "screen stand"))],
       ["Lumitek", "Keyforge", "Portaline", "Deskwise"],
       [("colour", ("black", "white", "grey", "silver", "pink")), ("connectivity", ("bluetooth", "2.4GHz wireless", "usb-c", "wired"))],
       (12, 160)),
    _c("Monitors & TVs", [("monitor", ("computer screen", "pc monitor", "display")), ("smart tv", ("television", "smart television")),
                          ("oled tv", ("oled television",)), ("projector", ("home theater projector", "movie projector"))],
       ["Visara", "Cortexa", "Brightwave", "Panoview"],
       [("screen", ("24 inch", "27 inch", "32 inch", "55 inch", "65 inch")), ("resolution", ("1080p", "1440p", "4K"))],
       (120, 1900)),
    _c("Phones & Accessories", [("smartphone", ("cell phone", "mobile phone", "android phone")),
                                ("phone case", ("phone cover", "protective case")),
                                ("screen protector", ("tempered glass", "screen guard")),
                                ("wireless charger", ("charging pad", "qi charger"))],
       ["Pixelon", "Novaphone", "Shieldix", "Chargeup"],
       [("colour", ("black", "white", "blue", "green", "purple", "red", "silver")), ("model", ("Pixelon 8", "Pixelon 9", "Nova X", "Nova X Pro"))],
       (9, 1100)),
    _c("Audio", [("wireless earbuds", ("bluetooth earbuds", "true wireless earphones")),
                 ("over-ear headphones", ("headphones", "over ear headset")),
                 ("bluetooth speaker", ("portable speaker", "wireless speaker")), ("soundbar", ("sound bar", "tv speaker"))],
       ["Sonora", "Bassline", "Echowave", "Tunely"],
       [("colour", ("black", "white", "blue", "red", "grey", "green")), ("feature", ("noise cancelling", "waterproof", "long battery"))],
       (25, 450)),
    _c("Cameras", [("mirrorless camera", ("digital camera", "interchangeable lens camera")),
                   ("action camera", ("sports camera", "helmet cam")), ("camera tripod", ("tripod", "camera stand")),
                   ("memory card", ("sd card", "microsd card"))],
       ["Optiva", "Lensora", "Shutterly", "Framewise"],
       [("colour", ("black", "silver", "grey")), ("capacity", ("64GB", "128GB", "256GB"))],
       (15, 1600), [("capacity", ("memory card",))]),
    _c("Kitchen Appliances", [("blender", ("smoothie maker", "countertop blender")), ("air fryer", ("airfryer", "hot air fryer")),
                              ("coffee maker", ("coffee machine", "drip coffee maker")), ("electric kettle", ("kettle", "water boiler")),
                              ("toaster", ("bread toaster", "2 slice toaster"))],
       ["Kitchora", "Brewmaster", "Heatwell", "Culina"],
       [("colour", ("black", "white", "red", "silver", "teal", "beige")), ("capacity", ("1L", "1.7L", "4 qt", "6 qt", "12 cup"))],
       (20, 300), [("capacity", ("blender", "air fryer", "coffee maker", "electric kettle"))]),
    _c("Cookware", [("frying pan", ("skillet", "fry pan")), ("saucepan", ("sauce pot", "small pot")),
                    ("dutch oven", ("casserole pot", "cocotte")), ("stock pot", ("soup pot", "large pot"))],
       ["Ferrocast", "Culina", "Copperleaf", "Chefmark"],
       [("material", ("stainless steel", "cast iron", "nonstick", "copper", "carbon steel")), ("size", ("8 inch", "10 inch", "12 inch", "5 qt", "8 qt"))],
       (20, 280)),
    _c("Tableware", [("dinner plates", ("plate set", "dinnerware set")), ("coffee mugs", ("mugs", "coffee cups")),
                     ("wine glasses", ("stemware", "red wine glasses")), ("cutlery set", ("flatware set", "silverware set"))],
       ["Tablecraft", "Porcelina", "Glassworth", "Dineline"],
       [("colour", ("white", "black", "blue", "grey", "beige", "green")), ("pack", ("set of 4", "set of 6", "set of 12"))],
       (14, 140)),
    _c("Furniture", [("sofa", ("couch", "settee")), ("armchair", ("accent chair", "lounge chair")),
                     ("coffee table", ("cocktail table", "center table")), ("bookshelf", ("bookcase", "shelving unit")),
                     ("office chair", ("desk chair", "ergonomic chair"))],
       ["Hearthwood", "Loftline", "Nordhem", "Oakridge Home"],
       [("colour", ("grey", "beige", "navy", "green", "brown", "black", "white")), ("material", ("oak", "walnut", "velvet", "linen", "leather", "metal"))],
       (80, 1400)),
    _c("Bedding", [("duvet cover", ("comforter cover", "quilt cover")), ("bed sheets", ("sheet set", "fitted sheets")),
                   ("pillow", ("bed pillow", "sleeping pillow")), ("mattress topper", ("mattress pad", "bed topper"))],
       ["Dreamloom", "Restwell", "Linenhaus", "Cloudnest"],
       [("colour", ("white", "grey", "beige", "navy", "green", "pink", "blue")), ("size", BED_SIZES),
        ("material", ("cotton", "linen", "bamboo", "microfiber", "memory foam"))], (20, 260)),
    _c("Home Decor", [("table lamp", ("desk lamp", "bedside lamp")), ("wall mirror", ("mirror", "hanging mirror")),
                      ("area rug", ("rug", "carpet")), ("curtains", ("drapes", "window curtains"))],
       ["Lumiere Home", "Hearthwood", "Atelier Nord", "Casa Verde"],
       [("colour", ("white", "black", "gold", "grey", "beige", "blue", "green")), ("size", ("small", "medium", "large", "5x7 ft", "8x10 ft"))],
       (18, 420)),
    _c("Bath", [("bath towels", ("towel set", "bath towel set")), ("shower curtain", ("shower liner",)),
                ("bath mat", ("bath rug", "shower mat")), ("toilet brush", ("toilet cleaner brush",))],
       ["Aquamora", "Spalane", "Restwell", "Cleanfold"],
       [("colour", ("white", "grey", "navy", "beige", "teal", "pink")), ("material", ("cotton", "bamboo", "microfiber", "polyester"))],
       (8, 90)),
    _c("Cleaning", [("vacuum cleaner", ("hoover", "upright vacuum")), ("robot vacuum", ("robovac", "robotic vacuum")),
                    ("spin mop", ("mop", "mop and bucket")), ("laundry detergent", ("washing liquid", "laundry soap"))],
       ["Dustwise", "Sparkly", "Cleanfold", "Vortexa"],
       [("colour", ("white", "black", "grey", "blue", "purple")), ("feature", ("cordless", "bagless", "hepa filter", "unscented"))],
       (8, 650)),
    _c("Power Tools", [("cordless drill", ("power drill", "drill driver")), ("impact driver", ("impact drill",)),
                       ("circular saw", ("skill saw", "circ saw")), ("orbital sander", ("random orbit sander", "palm sander"))],
       ["Torqline", "Ironclad", "Voltmaster", "Buildrite"],
       [("voltage", ("12V", "18V", "20V", "40V")), ("kit", ("tool only", "with battery", "with 2 batteries"))],
       (49, 420)),
    _c("Hardware", [("wood screws", ("deck screws", "screws")), ("wall anchors", ("drywall anchors", "plastic anchors")),
                    ("door hinges", ("hinges", "butt hinges")), ("cabinet handles", ("drawer pulls", "cabinet pulls"))],
       ["Fastenex", "Buildrite", "Hinge & Co", "Steelmark"],
       [("material", ("brass", "stainless steel", "zinc", "black steel")), ("pack", ("10 pack", "25 pack", "100 pack"))],
       (4, 60)),
    _c("Paint", [("interior paint", ("wall paint", "indoor paint")), ("exterior paint", ("outdoor paint", "house paint")),
                 ("paint roller", ("roller kit", "paint roller kit")), ("paint brush", ("brush", "angled brush"))],
       ["Colorhaus", "Tintworks", "Brushline", "Coatmaster"],
       [("colour", ("white", "grey", "beige", "blue", "green", "yellow", "black")), ("finish", ("matte", "eggshell", "satin", "semi-gloss")),
        ("size", ("1 quart", "1 gallon", "5 gallon"))], (6, 190)),
    _c("Garden", [("garden hose", ("water hose", "hose pipe")), ("lawn mower", ("mower", "grass cutter")),
                  ("pruning shears", ("secateurs", "pruners", "hand pruner")), ("planter", ("flower pot", "plant pot"))],
       ["Greenthumb", "Gardenia", "Yardwise", "Terrace Co"],
       [("colour", ("green", "black", "grey", "terracotta", "white")), ("size", ("small", "medium", "large", "50 ft", "100 ft"))],
       (9, 520)),
    _c("Camping", [("tent", ("camping tent", "dome tent")), ("sleeping bag", ("sleep sack",)),
                   ("camping stove", ("backpacking stove", "camp stove")), ("headlamp", ("head torch", "head light"))],
       ["Trailhaus", "Northpeak", "Campcraft", "Wildfire Gear"],
       [("colour", ("green", "orange", "blue", "grey", "red", "olive")), ("capacity", ("1 person", "2 person", "4 person", "6 person"))],
       (15, 480), [("capacity", ("tent",))]),
    _c("Fitness", [("yoga mat", ("exercise mat", "workout mat")), ("dumbbells", ("hand weights", "free weights")),
                   ("resistance bands", ("exercise bands", "workout bands")), ("jump rope", ("skipping rope", "speed rope"))],
       ["Flexcore", "Ironpulse", "Zenfit", "Kinetica"],
       [("colour", ("black", "purple", "pink", "blue", "green", "grey")), ("weight", ("2 lb", "5 lb", "10 lb", "20 lb", "light", "heavy"))],
       (8, 220)),
    _c("Cycling", [("mountain bike", ("mtb", "trail bike")), ("road bike", ("racing bike", "road bicycle")),
                   ("bike helmet", ("cycling helmet", "bicycle helmet")), ("bike lock", ("u lock", "bicycle lock"))],
       ["Velocita", "Ridgeway Bikes", "Spokewise", "Cadenza"],
       [("colour", ("black", "red", "blue", "white", "green", "orange")), ("size", ("S", "M", "L", "XL"))],
       (25, 2100)),
    _c("Toys", [("building blocks", ("construction bricks", "building bricks")), ("board game", ("family game", "tabletop game")),
                ("plush toy", ("stuffed animal", "soft toy")), ("rc car", ("remote control car", "rc truck"))],
       ["Playverse", "Brickly", "Cuddlebug", "Zoomtoys"],
       [("colour", ("red", "blue", "green", "yellow", "pink", "multicolor")), ("age", ("ages 3+", "ages 6+", "ages 8+", "ages 12+"))],
       (9, 150)),
    _c("Baby", [("baby stroller", ("pram", "pushchair", "buggy")), ("car seat", ("infant car seat", "baby car seat")),
                ("baby bottle", ("feeding bottle",)), ("diaper bag", ("nappy bag", "changing bag"))],
       ["Littlenest", "Cradleco", "Babywise", "Snugglebee"],
       [("colour", ("grey", "black", "beige", "navy", "pink", "green")), ("feature", ("lightweight", "foldable", "anti-colic", "travel system"))],
       (9, 700)),
    _c("Beauty", [("shampoo", ("hair shampoo", "hair wash")), ("conditioner", ("hair conditioner",)),
                  ("face moisturizer", ("face cream", "moisturiser", "day cream")), ("lipstick", ("lip color", "lip stick"))],
       ["Lumina Beauty", "Verdance", "Silkera", "Rosebay"],
       [("variant", ("for dry hair", "for oily skin", "sensitive", "fragrance free", "matte red", "nude")), ("size", ("50ml", "250ml", "500ml"))],
       (6, 60)),
    _c("Pet Supplies", [("dog food", ("dry dog food", "kibble")), ("cat litter", ("kitty litter", "clumping litter")),
                        ("dog bed", ("pet bed", "dog cushion")), ("cat tree", ("cat tower", "cat scratching tree"))],
       ["Pawsome", "Tailwag", "Whiskerly", "Furbest"],
       [("variant", ("chicken", "salmon", "lamb", "grain free", "unscented", "orthopedic")), ("size", ("small", "medium", "large", "15 lb", "30 lb"))],
       (10, 180)),
    _c("Watches & Jewelry", [("smartwatch", ("smart watch", "fitness watch")), ("analog watch", ("wristwatch", "wrist watch")),
                             ("necklace", ("pendant necklace", "chain")), ("earrings", ("stud earrings", "hoop earrings"))],
       ["Chronara", "Aurelia", "Timewell", "Gemline"],
       [("material", ("gold", "silver", "stainless steel", "rose gold", "leather strap")), ("colour", ("black", "silver", "gold", "blue", "pink"))],
       (25, 900)),
    _c("Office Supplies", [("notebook", ("journal", "notepad")), ("ballpoint pens", ("pens", "ballpens")),
                           ("desk organizer", ("desk tidy", "desktop organizer")), ("printer paper", ("copy paper", "a4 paper"))],
       ["Paperly", "Inkwise", "Deskwise", "Scriptor"],
       [("colour", ("black", "blue", "red", "white", "green", "assorted")), ("pack", ("single", "3 pack", "12 pack", "500 sheets"))],
       (3, 45)),
    _c("Grocery", [("coffee beans", ("whole bean coffee", "espresso beans")), ("green tea", ("matcha", "tea bags")),
                   ("olive oil", ("extra virgin olive oil", "evoo")), ("pasta", ("spaghetti", "penne"))],
       ["Roastery Nord", "Verdance Foods", "Casa Olivo", "Harvest Table"],
       [("variant", ("organic", "decaf", "dark roast", "medium roast", "whole wheat", "gluten free")), ("size", ("250g", "500g", "1kg", "500ml", "1L"))],
       (3, 40)),
)

# Product types bought together; symmetric. Drives the ESCI "complement" grade.
COMPLEMENTS: tuple[tuple[str, str], ...] = (
    ("laptop", "laptop bag"), ("laptop", "wireless mouse"), ("gaming laptop", "mechanical keyboard"),
    ("desktop computer", "monitor"), ("monitor", "monitor stand"), ("laptop", "usb-c hub"),
    ("smartphone", "phone case"), ("smartphone", "screen protector"), ("smartphone", "wireless charger"),
    ("mirrorless camera", "camera tripod"), ("mirrorless camera", "memory card"), ("action camera", "memory card"),
    ("coffee maker", "coffee beans"), ("electric kettle", "green tea"), ("dinner plates", "cutlery set"),
    ("coffee mugs", "coffee beans"), ("sofa", "coffee table"), ("sofa", "area rug"), ("bed sheets", "pillow"),
    ("duvet cover", "pillow"), ("cordless drill", "wood screws"), ("impact driver", "wood screws"),
    ("interior paint", "paint roller"), ("interior paint", "paint brush"), ("exterior paint", "paint brush"),
    ("tent", "sleeping bag"), ("tent", "camping stove"), ("tent", "headlamp"), ("mountain bike", "bike helmet"),
    ("road bike", "bike lock"), ("dog bed", "dog food"), ("cat tree", "cat litter"), ("baby stroller", "diaper bag"),
    ("baby stroller", "car seat"), ("shampoo", "conditioner"), ("smart tv", "soundbar"), ("hiking boots", "backpack"),
    ("yoga mat", "resistance bands"), ("dumbbells", "yoga mat"), ("office chair", "desk organizer"),
    ("running shoes", "wireless earbuds"), ("frying pan", "olive oil"), ("stock pot", "pasta"),
    ("lawn mower", "garden hose"), ("bath towels", "bath mat"), ("shower curtain", "bath mat"),
    ("smartwatch", "wireless charger"), ("notebook", "ballpoint pens"), ("rain jacket", "rain boots"),
)

# Model-line names combined with brands, e.g. "Apexrun Glide 3".
LINE_NAMES = ("Glide", "Pulse", "Terra", "Nova", "Aero", "Core", "Flex", "Prime", "Edge", "Luxe",
              "Classic", "Urban", "Sierra", "Atlas", "Orbit", "Vista", "Zen", "Max", "Lite", "Pro")
