"""PostgreSQL libraries of the conformance suite (tests/tests/conformance.rs).

Each subcommand runs a list of cases with a real library and prints one line
per case, `CASE <name>\t<result>`: what the library returned as sorted JSON,
or `ERROR <class>: <message>`. A case that fails does not stop the next one.
The connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE, PGSSLMODE) the test sets, the same direct and
intercepted. Every case leaves the database as it found it, so that the
direct run and the intercepted run see the same state.

    python3 conformance_pg.py psycopg
    python3 conformance_pg.py sqlalchemy
    python3 conformance_pg.py django PROJECT_DIR
"""

import json
import os
import sys


def out(name, result):
    print(f"CASE {name}\t{result}", flush=True)


def case(name, fn):
    try:
        result = fn()
        out(name, json.dumps(result, sort_keys=True, default=str))
    except Exception as e:  # the error is the case's result
        msg = " ".join(str(e).split())
        out(name, f"ERROR {type(e).__name__}: {msg}")


# --- psycopg ---------------------------------------------------------------


def psycopg_cases():
    import psycopg

    def connect(**kw):
        return psycopg.connect("", **kw)  # libpq reads the environment

    def named_cursor():
        with connect() as conn, conn.cursor(name="conf_named") as cur:
            cur.itersize = 1
            cur.execute("SELECT id, item FROM orders ORDER BY id")
            return [list(r) for r in cur]

    def named_cursor_masked():
        with connect() as conn, conn.cursor(name="conf_masked") as cur:
            cur.execute("SELECT name, password, api_key FROM users ORDER BY id")
            return [list(r) for r in cur.fetchmany(2)] + [list(r) for r in cur.fetchall()]

    def scrollable():
        with connect() as conn, conn.cursor(name="conf_scroll", scrollable=True) as cur:
            cur.execute("SELECT id, item FROM orders ORDER BY id")
            got = [cur.fetchone()]
            cur.scroll(0, mode="absolute")
            got.append(cur.fetchone())
            cur.scroll(-1)
            got.append(cur.fetchone())
            return [list(r) if r else None for r in got]

    def scrollable_masked():
        with connect() as conn, conn.cursor(name="conf_scroll_m", scrollable=True) as cur:
            cur.execute("SELECT name, password FROM users ORDER BY id")
            cur.scroll(2)
            got = [cur.fetchone()]
            cur.scroll(0, mode="absolute")
            got.append(cur.fetchone())
            return [list(r) for r in got]

    def holdable():
        with connect() as conn:
            cur = conn.cursor(name="conf_hold", withhold=True)
            cur.execute("SELECT id, item FROM orders ORDER BY id")
            conn.commit()
            rows = [list(r) for r in cur.fetchall()]
            cur.close()
            return rows

    def copy_out():
        with connect() as conn, conn.cursor() as cur:
            with cur.copy("COPY orders (id, item) TO STDOUT") as copy:
                return [list(r) for r in copy.rows()]

    def copy_in():
        with connect() as conn, conn.cursor() as cur:
            with cur.copy("COPY orders (id, item) FROM STDIN") as copy:
                for row in [(100, "pen"), (101, "ink")]:
                    copy.write_row(row)
            cur.execute("SELECT id, item FROM orders WHERE id >= 100 ORDER BY id")
            rows = [list(r) for r in cur.fetchall()]
            cur.execute("DELETE FROM orders WHERE id >= 100")
            conn.commit()
            return rows

    def copy_masked_out():
        with connect() as conn, conn.cursor() as cur:
            with cur.copy("COPY (SELECT name, password FROM users ORDER BY id) TO STDOUT") as copy:
                return [list(r) for r in copy.rows()]

    def binary():
        with connect() as conn, conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, item, now() > '2000-01-01' FROM orders WHERE id = %s", (1,))
            return [list(r) for r in cur.fetchall()]

    def binary_masked():
        with connect() as conn, conn.cursor(binary=True) as cur:
            cur.execute("SELECT name, password FROM users WHERE id = %s", (1,))
            return [list(r) for r in cur.fetchall()]

    def prepared():
        with connect(prepare_threshold=0) as conn, conn.cursor() as cur:
            got = []
            for i in (1, 2, 1):
                cur.execute("SELECT item FROM orders WHERE id = %s", (i,))
                got.append(cur.fetchone()[0])
            return got

    def pipeline():
        with connect() as conn:
            with conn.pipeline():
                c1 = conn.execute("SELECT item FROM orders WHERE id = %s", (1,))
                c2 = conn.execute("UPDATE orders SET item = item WHERE id = %s", (2,))
                c3 = conn.execute("SELECT name, password FROM users WHERE id = %s", (2,))
            return [c1.fetchall(), c2.rowcount, [list(r) for r in c3.fetchall()]]

    def executemany():
        with connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orders (id, item) VALUES (%s, %s)", [(200, "a"), (201, "b")]
            )
            cur.execute("SELECT count(*) FROM orders WHERE id >= 200")
            n = cur.fetchone()[0]
            cur.execute("DELETE FROM orders WHERE id >= 200")
            conn.commit()
            return n

    def listen_notify():
        with connect(autocommit=True) as conn:
            conn.execute("LISTEN conf_channel")
            with connect(autocommit=True) as other:
                other.execute("SELECT pg_notify('conf_channel', 'build 42 done')")
            got = [(n.channel, n.payload) for n in conn.notifies(timeout=10, stop_after=1)]
            return got

    def transaction_savepoint():
        with connect() as conn:
            with conn.transaction():
                conn.execute("UPDATE orders SET item = 'x' WHERE id = 1")
                try:
                    with conn.transaction():
                        conn.execute("SELECT 1/0")
                except psycopg.errors.DivisionByZero:
                    pass
                item = conn.execute("SELECT item FROM orders WHERE id = 1").fetchone()[0]
                raise psycopg.Rollback()
        with connect() as conn:
            return [item, conn.execute("SELECT item FROM orders WHERE id = 1").fetchone()[0]]

    def ddl():
        with connect() as conn:
            conn.execute("CREATE TABLE conf_kept (id int)")
            conn.execute("DROP TABLE conf_kept")
            conn.commit()
            return "created and dropped"

    def delete_without_where():
        with connect() as conn:
            conn.execute("DELETE FROM orders")
            conn.rollback()
            return "rolled back"

    case("named cursor", named_cursor)
    case("named cursor over masked columns", named_cursor_masked)
    case("scrollable cursor: scroll()", scrollable)
    case("scrollable cursor over masked columns", scrollable_masked)
    case("holdable cursor (WITH HOLD) read after commit", holdable)
    case("COPY TO STDOUT", copy_out)
    case("COPY FROM STDIN", copy_in)
    case("COPY (SELECT masked columns) TO STDOUT", copy_masked_out)
    case("binary results", binary)
    case("binary results over masked columns", binary_masked)
    case("server-side prepared statements", prepared)
    case("pipeline mode", pipeline)
    case("executemany", executemany)
    case("LISTEN/NOTIFY", listen_notify)
    case("nested transaction (savepoint) and rollback", transaction_savepoint)
    case("CREATE TABLE", ddl)
    case("DELETE without WHERE", delete_without_where)


# --- SQLAlchemy ------------------------------------------------------------


def sqlalchemy_cases():
    import sqlalchemy as sa
    from sqlalchemy import orm

    # postgresql+psycopg:// with an empty host: libpq's environment decides.
    engine = sa.create_engine("postgresql+psycopg://", pool_pre_ping=True)

    class Base(orm.DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "orders"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        item: orm.Mapped[str]

    class User(Base):
        __tablename__ = "users"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str]
        email: orm.Mapped[str]
        password: orm.Mapped[str]
        api_key: orm.Mapped[str]

    def core_select():
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT id, item FROM orders WHERE id > :n ORDER BY id"), {"n": 0})
            return [list(r) for r in rows]

    def orm_query():
        with orm.Session(engine) as s:
            return [(o.id, o.item) for o in s.scalars(sa.select(Order).order_by(Order.id))]

    def orm_masked():
        with orm.Session(engine) as s:
            return [(u.name, u.password, u.api_key) for u in s.scalars(sa.select(User).order_by(User.id))]

    def orm_write():
        with orm.Session(engine) as s:
            s.add(Order(id=300, item="desk"))
            s.flush()
            o = s.get(Order, 300)
            o.item = "chair"
            s.flush()
            got = s.scalars(sa.select(Order.item).where(Order.id == 300)).one()
            s.delete(o)
            s.commit()
            return got

    def reflect():
        insp = sa.inspect(engine)
        cols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns("orders")]
        return {
            "tables": sorted(insp.get_table_names()),
            "orders": cols,
            "pk": insp.get_pk_constraint("orders")["constrained_columns"],
            "indexes": sorted(i["name"] for i in insp.get_indexes("orders")),
        }

    def metadata_reflect():
        md = sa.MetaData()
        md.reflect(engine, only=["orders", "users"])
        return {t: [c.name for c in md.tables[t].columns] for t in sorted(md.tables)}

    def create_all():
        md = sa.MetaData()
        sa.Table("conf_sa_new", md, sa.Column("id", sa.Integer, primary_key=True))
        md.create_all(engine)
        md.drop_all(engine)
        return "created and dropped"

    case("Core text() select", core_select)
    case("ORM select", orm_query)
    case("ORM select over masked columns", orm_masked)
    case("ORM insert, update, delete", orm_write)
    case("inspect(): columns, primary key, indexes", reflect)
    case("MetaData.reflect()", metadata_reflect)
    case("MetaData.create_all()", create_all)


# --- Django ORM ------------------------------------------------------------


def django_cases(project):
    sys.path.insert(0, project)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "confsite.settings")
    import django

    django.setup()
    from django.db import connection, transaction
    from django.db.models import Count

    from confapp.models import Build, Credential

    def orm_rw():
        with transaction.atomic():
            b = Build.objects.create(job="unit", status="running")
            Build.objects.filter(pk=b.pk).update(status="passed")
            got = list(Build.objects.filter(job="unit").values_list("job", "status"))
            Build.objects.filter(pk=b.pk).delete()
        return got

    def aggregate():
        Build.objects.bulk_create([Build(job=f"j{i}", status="queued") for i in range(3)])
        got = list(Build.objects.values("status").annotate(n=Count("id")).order_by("status"))
        Build.objects.filter(job__startswith="j").delete()
        return got

    def select_for_update():
        b = Build.objects.create(job="lock", status="queued")
        with transaction.atomic():
            got = Build.objects.select_for_update().get(pk=b.pk).status
        b.delete()
        return got

    def masked():
        return list(Credential.objects.order_by("name").values_list("name", "api_token"))

    def raw_cursor():
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM confapp_build")
            return cur.fetchone()[0]

    case("ORM create, update, filter, delete in atomic()", orm_rw)
    case("bulk_create and aggregate", aggregate)
    case("select_for_update()", select_for_update)
    case("model with a masked field", masked)
    case("connection.cursor()", raw_cursor)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "psycopg":
        psycopg_cases()
    elif cmd == "sqlalchemy":
        sqlalchemy_cases()
    elif cmd == "django":
        django_cases(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} psycopg|sqlalchemy|django PROJECT_DIR")


if __name__ == "__main__":
    main()
