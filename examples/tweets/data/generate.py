#!/usr/bin/env python3
"""Writes posts.jsonl: the synthetic corpus the tweets example replays by default.

Every post is made up by this script (fixed seed, so the output is reproducible): the authors,
texts and times are invented, and each line says so with "synthetic": true. Run it from anywhere:

    python3 examples/tweets/data/generate.py

It needs nothing beyond the Python standard library.
"""

import json
import os
import random
from datetime import datetime, timedelta, timezone

SEED = 20261122
COUNT = 420
REPOST_SHARE = 0.12

AUTHORS = [
    "ada_codes", "bitbarista", "cloudcartographer", "datadaria", "edgecase_ed", "fernwave",
    "gridlock_gus", "hexhannah", "inkandoak", "juniper_dev", "kilnkat", "lunarlogs",
    "midnight_mo", "nimbusnoor", "orbitoscar", "pixelpriya", "quillquinn", "riverrune",
    "solsticesam", "tidepooltom", "umbra_uma", "vectorvik", "willowwatts", "xenon_xia",
    "yarrow_yu", "zephyrzed",
]

# topic -> (hashtags, sentence templates); {tag}/{tag2} are filled with the topic's hashtags.
TOPICS = {
    "crypto": (
        ["#Bitcoin", "#Ethereum", "#crypto", "#DeFi"],
        [
            "{tag} just moved 3% in an hour and my group chat is losing it",
            "Explaining {tag} to my grandmother went better than expected {tag2}",
            "Hot take: {tag} fees are the real story this week",
            "Watching the {tag} order book like it's a nature documentary",
            "Another {tag} conference, another hoodie {tag2}",
            "Is anyone else still mining {tag} on a laptop from 2014?",
        ],
    ),
    "rust": (
        ["#RustLang", "#tokio", "#async", "#WebAssembly"],
        [
            "The borrow checker was right again {tag}",
            "Rewrote the hot loop in {tag} and the latency graph went flat {tag2}",
            "{tag} tip: read the error message twice, it usually tells you the fix",
            "Shipping a tiny {tag} service today, fingers crossed {tag2}",
            "Compile times are coffee breaks with extra steps {tag}",
            "First {tag} PR merged into a project I use every day!",
        ],
    ),
    "python": (
        ["#Python", "#Django", "#DataScience", "#pandas"],
        [
            "{tag} one-liner of the day saved me forty lines {tag2}",
            "Migrating a {tag} app to async views, wish me luck",
            "Upgraded my {tag} setup and everything feels snappier",
            "Teaching {tag} to a room of biologists tomorrow {tag2}",
            "My {tag} notebook has 212 cells and I fear it",
        ],
    ),
    "space": (
        ["#Space", "#NASA", "#Mars", "#astronomy"],
        [
            "Clear skies tonight, telescope out {tag}",
            "That {tag} launch stream had me holding my breath {tag2}",
            "New {tag} images dropped and my wallpaper is updated",
            "Saw the ISS pass over the harbour {tag}",
            "Reading about {tag} rovers instead of doing my taxes {tag2}",
        ],
    ),
    "climate": (
        ["#Climate", "#SolarPower", "#EnergyTransition", "#heatwave"],
        [
            "Our street's {tag} co-op just passed 40 rooftops {tag2}",
            "Third {tag} day in a row, the river is the only sane place",
            "New wind farm numbers look great {tag}",
            "Planting trees with the school this weekend {tag}",
            "Grid operator says record {tag} output at noon {tag2}",
        ],
    ),
    "football": (
        ["#WorldCup", "#football", "#PremierLeague", "#UCL"],
        [
            "That stoppage-time goal {tag} I'm not okay",
            "Ref, are you watching the same match? {tag}",
            "Predictions thread for tonight {tag} {tag2}",
            "My fantasy team is a crime scene this week {tag}",
            "Goalkeeper of the season, no debate {tag}",
        ],
    ),
    "food": (
        ["#coffee", "#baking", "#sourdough", "#ramen"],
        [
            "Dialled in the grinder and the {tag} finally tastes like the bag says",
            "Loaf number 37, crumb is getting there {tag} {tag2}",
            "Rainy day means {tag} day",
            "Tried the new place on Dock Street: 9/10 {tag}",
            "Hot chocolate is just {tag} for people with feelings",
        ],
    ),
    "music": (
        ["#Jazz", "#vinyl", "#NowPlaying", "#synth"],
        [
            "Found a mint {tag} pressing at the flea market {tag2}",
            "{tag}: the album that got me through finals",
            "Built a little {tag} patch that sounds like rain on a tin roof",
            "Live {tag} at the corner bar tonight, free entry",
            "Cleaning records on a Sunday morning {tag}",
        ],
    ),
    "opensource": (
        ["#OpenSource", "#Linux", "#GitHub", "#selfhosted"],
        [
            "Maintainers deserve more thank-you notes {tag}",
            "Moved my photo backups to a {tag} box in the closet {tag2}",
            "Filed my first bug report with a reproducer and felt like a pro {tag}",
            "{tag} kernel update and the laptop sleeps properly now",
            "Reminder: docs are contributions too {tag}",
        ],
    ),
    "ai": (
        ["#AI", "#MachineLearning", "#LLM", "#robotics"],
        [
            "Spent the day labelling data, the glamorous side of {tag}",
            "The {tag} demo worked on stage, which is the real miracle {tag2}",
            "Reading group this week: attention papers {tag}",
            "Our lab {tag} arm learned to fold towels, badly",
            "Benchmarks are not vibes, vibes are not benchmarks {tag}",
        ],
    ),
}

TAILS = ["", "", "", " Thoughts?", " 🚀", " (thread)", " More soon.", " Who's in?", " 😅", " ☕"]


def main() -> None:
    rng = random.Random(SEED)
    start = datetime(2026, 3, 14, 8, 0, 0, tzinfo=timezone.utc)
    posts = []
    t = start
    for i in range(COUNT):
        t += timedelta(seconds=rng.randint(20, 600))
        author = rng.choice(AUTHORS)
        if posts and rng.random() < REPOST_SHARE:
            orig = rng.choice(posts[-40:])
            text = f"RT @{orig['author']}: {orig['text']}"
            repost = True
        else:
            topic = rng.choice(sorted(TOPICS))
            tags, templates = TOPICS[topic]
            tag, tag2 = rng.sample(tags, 2)
            text = rng.choice(templates).format(tag=tag, tag2=tag2) + rng.choice(TAILS)
            repost = False
        post_id = str(1_900_000_000_000_000_000 + i * 7919)
        posts.append({
            "id": post_id,
            "author": author,
            "text": text,
            "created_at": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "repost": repost,
            "synthetic": True,
        })
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "posts.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for p in posts:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"wrote {len(posts)} synthetic posts to {out}")


if __name__ == "__main__":
    main()
