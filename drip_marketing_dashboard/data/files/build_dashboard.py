"""Regenerate ``drip_marketing_dashboard.json`` (the spreadsheet of the Dashboards app).

    python drip_marketing_dashboard/data/files/build_dashboard.py

The spreadsheet is data, not code, but written by hand it is thousands of lines of JSON;
this script keeps its layout readable and its pivots, charts and formulas consistent.
Every data source reads ``drip.funnel.report`` (drip_marketing's funnel), live: pivots
through ``PIVOT.VALUE`` / ``PIVOT.HEADER`` formulas, charts through Odoo graph data
sources. Two global filters: the period (matched on the funnel's day, the previous
period for the scorecards' baseline) and the journey.
"""

import json
from pathlib import Path

MODEL = "drip.funnel.report"
MENU = "drip_marketing.drip_funnel_report_menu"
PERIOD = "5b0c2a61-7a31-4f1e-9a52-9d5f1c0d7a01"
JOURNEY = "8e6f3c22-41d4-4b8e-b3a5-2f0c6d9e1b02"
OUT = Path(__file__).with_name("drip_marketing_dashboard.json")
TOP = 10


def matching(offset=0):
    return {
        PERIOD: {"chain": "date", "type": "date", "offset": offset},
        JOURNEY: {"chain": "journey_id", "type": "many2one"},
    }


def pivot(pivot_id, name, measures, rows=(), offset=0, sort=None):
    return {
        "type": "ODOO",
        "fieldMatching": matching(offset),
        "context": {},
        "domain": [],
        "id": pivot_id,
        "measures": [{"id": m, "fieldName": m} for m in measures],
        "model": MODEL,
        "name": name,
        "sortedColumn": (
            {"groupId": [[], []], "measure": sort, "order": "desc"} if sort else None
        ),
        "formulaId": pivot_id,
        "columns": [],
        "rows": [{"fieldName": r} for r in rows],
    }


def view_link(label, view_type, measure=None, group_by=None, mode=None):
    """A cell opening the funnel report (the title of a block)."""
    context = {"group_by": group_by or []}
    if view_type == "graph":
        context.update(graph_measure=measure, graph_mode=mode, graph_groupbys=group_by or [])
    else:
        context.update(pivot_measures=[measure] if measure else [], pivot_column_groupby=[],
                       pivot_row_groupby=group_by or [])
    action = {
        "viewType": view_type,
        "action": {
            "domain": [],
            "context": context,
            "modelName": MODEL,
            "views": [[False, "pivot"], [False, "graph"], [False, "list"], [False, "search"]],
        },
        "threshold": 0,
        "name": "Funnel",
    }
    return f"[{label}](odoo://view/{json.dumps(action, separators=(',', ':'))})"


def scorecard(figure_id, x, title, row, background):
    return {
        "id": figure_id, "x": x, "y": 40, "width": 160, "height": 102, "tag": "chart",
        "data": {
            "baselineColorDown": "#DC6965", "baselineColorUp": "#00A04A",
            "baselineMode": "percentage",
            "title": {"text": title, "bold": True, "color": "#434343"},
            "type": "scorecard", "background": background,
            "baseline": f"Data!E{row}", "baselineDescr": "since last period",
            "keyValue": f"Data!D{row}", "humanize": False,
        },
    }


def graph(figure_id, x, y, measure, chart_type):
    mode = chart_type.split("_")[1]
    data = {
        "title": {"text": ""},
        "background": "#FFFFFF",
        "legendPosition": "none",
        "metaData": {"groupBy": ["date:week"], "measure": measure, "order": None,
                     "resModel": MODEL, "mode": mode},
        "searchParams": {"comparison": None, "context": {}, "domain": [],
                         "groupBy": ["date:week"], "orderBy": []},
        "type": chart_type,
        "verticalAxisPosition": "left",
        "stacked": False,
        "fieldMatching": matching(),
    }
    if mode == "line":
        data["fillArea"] = True
    return {"id": figure_id, "x": x, "y": y, "width": 490, "height": 300, "tag": "chart",
            "data": data}


# --------------------------------------------------------------------------- Data sheet
KPIS = [
    # (row, label, current formula on pivot 1, formula on pivot 2, is a rate)
    (2, "Messages sent", 'PIVOT.VALUE({p},"sent")', False),
    (3, "Open rate", 'IFERROR(PIVOT.VALUE({p},"opened")/PIVOT.VALUE({p},"sent"))', True),
    (4, "Click rate", 'IFERROR(PIVOT.VALUE({p},"clicked")/PIVOT.VALUE({p},"sent"))', True),
    (5, "Unsubscribe rate",
     'IFERROR(PIVOT.VALUE({p},"unsubscribed")/PIVOT.VALUE({p},"sent"))', True),
    (6, "Conversions", 'PIVOT.VALUE({p},"converted")', False),
    (7, "Attributed revenue", 'PIVOT.VALUE({p},"revenue")', False),
    (8, "Opt-outs", 'PIVOT.VALUE({p},"unsubscribed")', False),
    (9, "Entered journeys", 'PIVOT.VALUE({p},"entered")', False),
]


def data_sheet():
    cells = {
        "A1": {"content": '=_t("KPI")'}, "B1": {"content": '=_t("Current")'},
        "C1": {"content": '=_t("Previous")'}, "D1": {"content": '=_t("Current")'},
        "E1": {"content": '=_t("Previous")'},
    }
    formats = {}
    for row, label, formula, rate in KPIS:
        cells[f"A{row}"] = {"content": f'=_t("{label}")'}
        cells[f"B{row}"] = {"content": "=" + formula.format(p=1)}
        cells[f"C{row}"] = {"content": "=" + formula.format(p=2)}
        if rate:
            cells[f"D{row}"] = {"content": f"=B{row}"}
            cells[f"E{row}"] = {"content": f"=C{row}"}
            for column in "BCDE":
                formats[f"{column}{row}"] = 1
        else:
            cells[f"D{row}"] = {"content": f"=FORMAT.LARGE.NUMBER(B{row})"}
            cells[f"E{row}"] = {"content": f"=FORMAT.LARGE.NUMBER(C{row})"}
    return sheet("drip-data", "Data", cells, {"A1:E1": 5}, formats, cols={0: 160})


# --------------------------------------------------------------------------- Dashboard
def dashboard_sheet():
    cells = {
        "A1": {"content": view_link("Drip Marketing", "pivot", "sent", ["journey_id"])},
        "A9": {"content": view_link("Messages sent per week", "graph", "sent",
                                    ["date:week"], "line")},
        "E9": {"content": view_link("Attributed revenue per week", "graph", "revenue",
                                    ["date:week"], "bar")},
        "A23": {"content": view_link("Conversions per week", "graph", "converted",
                                     ["date:week"], "bar")},
        "E23": {"content": view_link("Opt-outs per week", "graph", "unsubscribed",
                                     ["date:week"], "bar")},
        "A37": {"content": view_link("Top journeys", "pivot", "revenue", ["journey_id"])},
    }
    headers = ["Journey", "Sent", "Open rate", "Click rate", "Conversions", "Revenue"]
    for column, header in zip("ABCDEF", headers):
        cells[f"{column}38"] = {"content": f'=_t("{header}")'}
    formats = {}
    for index in range(1, TOP + 1):
        row = 38 + index
        key = f'"#journey_id",{index}'
        cells[f"A{row}"] = {"content": f"=PIVOT.HEADER(3,{key})"}
        cells[f"B{row}"] = {"content": f'=PIVOT.VALUE(3,"sent",{key})'}
        cells[f"C{row}"] = {"content": f'=IFERROR(PIVOT.VALUE(3,"opened",{key})'
                                       f'/PIVOT.VALUE(3,"sent",{key}))'}
        cells[f"D{row}"] = {"content": f'=IFERROR(PIVOT.VALUE(3,"clicked",{key})'
                                       f'/PIVOT.VALUE(3,"sent",{key}))'}
        cells[f"E{row}"] = {"content": f'=PIVOT.VALUE(3,"converted",{key})'}
        cells[f"F{row}"] = {"content": f'=PIVOT.VALUE(3,"revenue",{key})'}
        formats[f"C{row}"] = formats[f"D{row}"] = 1
    styles = {"A1": 1, "A9": 1, "E9": 1, "A23": 1, "E23": 1, "A37": 1, "A38:F38": 2,
              f"A39:F{38 + TOP}": 3}
    figures = [
        scorecard("drip-kpi-sent", 0, "Messages sent", 2, "#EFF6FF"),
        scorecard("drip-kpi-open", 168, "Open rate", 3, "#EFF6FF"),
        scorecard("drip-kpi-click", 336, "Click rate", 4, "#EFF6FF"),
        scorecard("drip-kpi-unsub", 504, "Unsubscribe rate", 5, "#FEF2F2"),
        scorecard("drip-kpi-conv", 672, "Conversions", 6, "#FFF7ED"),
        scorecard("drip-kpi-revenue", 840, "Attributed revenue", 7, "#FFF7ED"),
        graph("drip-chart-sent", 0, 215, "sent", "odoo_line"),
        graph("drip-chart-revenue", 510, 215, "revenue", "odoo_bar"),
        graph("drip-chart-conv", 0, 537, "converted", "odoo_bar"),
        graph("drip-chart-optout", 510, 537, "unsubscribed", "odoo_bar"),
    ]
    rows = {str(r): {"size": 40} for r in (0, 8, 22, 36)}
    return sheet("drip-dashboard", "Dashboard", cells, styles, formats, figures=figures,
                 rows=rows, cols={0: 250, 1: 100, 2: 100, 3: 100, 4: 110, 5: 120})


def sheet(sheet_id, name, cells, styles, formats, figures=(), rows=None, cols=None):
    return {
        "id": sheet_id, "name": name, "colNumber": 8, "rowNumber": 60,
        "rows": rows or {}, "cols": {str(k): {"size": v} for k, v in (cols or {}).items()},
        "merges": [], "cells": cells, "styles": styles, "formats": formats, "borders": {},
        "conditionalFormats": [], "figures": list(figures), "tables": [],
        "areGridLinesVisible": False, "isVisible": True, "headerGroups": {"ROW": [], "COL": []},
        "dataValidationRules": [], "comments": {},
    }


def build():
    measures = ["entered", "sent", "delivered", "opened", "clicked", "unsubscribed",
                "converted", "revenue"]
    figures_menu = {
        figure["id"]: MENU for figure in dashboard_sheet()["figures"]
    }
    return {
        "version": 21,
        "sheets": [dashboard_sheet(), data_sheet()],
        "styles": {
            "1": {"textColor": "#01666b", "bold": True, "fontSize": 16},
            "2": {"textColor": "#434343", "fontSize": 11, "bold": True},
            "3": {"textColor": "#434343", "verticalAlign": "middle"},
            "5": {"bold": True},
        },
        "formats": {"1": "0.0%"},
        "borders": {},
        "revisionId": "START_REVISION",
        "uniqueFigureIds": True,
        "settings": {"locale": {
            "name": "English (US)", "code": "en_US", "thousandsSeparator": ",",
            "decimalSeparator": ".", "dateFormat": "mm/dd/yyyy", "timeFormat": "hh:mm:ss",
            "formulaArgSeparator": ",", "weekStart": 7}},
        "pivots": {
            "1": pivot("1", "Funnel - current period", measures),
            "2": pivot("2", "Funnel - previous period", measures, offset=-1),
            "3": pivot("3", "Funnel by journey", measures, rows=["journey_id"], sort="revenue"),
        },
        "pivotNextId": 4,
        "customTableStyles": {},
        "odooVersion": 12,
        "globalFilters": [
            {"id": PERIOD, "type": "date", "label": "Period",
             "defaultValue": "last_three_months", "rangeType": "relative"},
            {"id": JOURNEY, "type": "relation", "label": "Journey",
             "modelName": "drip.journey", "defaultValue": [], "defaultValueDisplayNames": [],
             "rangeType": "year"},
        ],
        "lists": {},
        "listNextId": 1,
        "chartOdooMenusReferences": figures_menu,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=4, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
